"""The README's test command is what CI runs, in a fresh venv, and it installs what the tests import."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    """The one command in the README's bash block after "**Run the tests**"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("**Run the tests**", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    lines = [ln for ln in block.group(1).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    return lines[0].strip()


def _ci_commands() -> list[str]:
    text = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_ci_runs_exactly_the_readme_test_command_last() -> None:
    """Last, so the script's exit status is the command's (pytest's when the install worked)."""
    commands = _ci_commands()
    assert commands[-1] == _readme_test_command()
    assert "pytest" in commands[-1]
    assert " -m " not in commands[-1].split("pytest", 1)[1]  # CI runs every test, the slow ones too


def test_ci_runs_it_in_a_fresh_venv() -> None:
    """Removes and recreates its venv, then activates it before the README's command."""
    commands = _ci_commands()
    assert "set -euo pipefail" in commands
    venv = next(ln for ln in commands if re.fullmatch(r"VENV=\S+", ln)).split("=", 1)[1]
    order = [commands.index(ln) for ln in ('rm -rf "$VENV"', 'python3 -m venv "$VENV"',
                                           'source "$VENV/bin/activate"')]
    assert order == sorted(order) and order[-1] < len(commands) - 1
    assert "--system-site-packages" not in " ".join(commands)
    assert f"{venv.rstrip('/')}/" in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()


def test_the_test_extras_declare_what_the_tests_import_indirectly() -> None:
    """diffusers' LMSDiscreteScheduler (tests/test_sampling_diffusers.py) imports scipy, which
    diffusers does not require; without it a fresh venv fails that test."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = re.search(r'-e "\.\[([\w,]+)\]"', _readme_test_command())
    assert installed is not None
    declared = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()
                for extra in installed.group(1).split(",") for req in extras[extra]}
    assert {"scipy", "pytest", "pytest-timeout", "hypothesis", "playwright", "peft", "gradio"} <= declared
