"""`--help` of every command: every option's help renders, and help stays light (issue 24)."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from library.cli import build_parser, main
from library.config_io import build_train_parser

REPO = Path(__file__).resolve().parents[1]


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every parser reachable from `parser` (subcommands and their actions), with its command path."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk(child, path + (name,))


def all_parsers() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return [(("train_network.py",), build_train_parser())] + list(walk(build_parser()))


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_every_command_renders_every_option_help():
    parsers = all_parsers()
    assert len(parsers) > 15  # the walk reached the subcommands and their actions
    for path, parser in parsers:
        text = _flat(parser.format_help())
        assert "'option_strings'" not in text, path  # a raw %-expanded dict leaked into the help
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                continue
            expanded = formatter._expand_help(action)  # raises on a stray %
            assert _flat(expanded)[:60] in text, (path, action.dest)


def test_percent_in_a_generated_flag_renders_literally():
    text = _flat(build_train_parser().format_help())
    assert "much less memory, ~30% slower" in text


def _stderr_of(run, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("argv, prog", [
    (["train", "--network_dimm", "8"], "lorasmith train"),
    (["config", "validate", "--network_dimm", "8"], "lorasmith config validate"),
])
def test_typo_flag_is_one_line_with_the_closest_flag(argv, prog, capsys):
    err = _stderr_of(main, argv, capsys)
    assert err == f"{prog}: error: unrecognized argument --network_dimm: did you mean --network_dim?"


def test_typo_flag_in_train_network_py(capsys):
    import train_network

    err = _stderr_of(train_network.main, ["--network_dimm", "8"], capsys)
    assert err == "train_network.py: error: unrecognized argument --network_dimm: did you mean --network_dim?"


def test_wrong_flag_on_a_subcommand_is_reported_by_the_subcommand(capsys):
    err = _stderr_of(main, ["sample", "--outdir", "x"], capsys)
    assert err == "lorasmith sample: error: unrecognized argument --outdir: did you mean --output_dir?"


def test_other_parse_errors_stay_short(capsys):
    err = _stderr_of(main, ["sample", "--prompt", "x"], capsys)
    assert len(err.splitlines()) == 1
    assert err.startswith("lorasmith sample: error:") and "--pretrained_model_name_or_path" in err


def test_debug_is_accepted_after_the_subcommand(capsys):
    assert main(["config", "presets", "--debug"]) == 0
    assert "person-sd15-dadapt" in capsys.readouterr().out


HEAVY = ("torch", "diffusers", "transformers", "gradio", "cv2", "scipy")


def test_help_and_config_validate_import_no_heavy_library(tmp_path):
    """Issue 24: `lorasmith --help` took 6.5 s idle because registering subcommands imported torch and diffusers.

    A fresh interpreter builds every parser, renders every --help and validates a
    preset; none of the heavy libraries may be imported on the way.
    """
    script = (
        "import sys, contextlib, io\n"
        "from tests.test_cli_help import all_parsers\n"
        "from library.cli import main\n"
        "for _path, parser in all_parsers():\n"
        "    parser.format_help()\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['config', 'validate', '--preset', 'quick-cpu-test', '--train_data_dir', sys.argv[1],\n"
        "                 '--output_dir', sys.argv[2]]) == 0\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    argv = [sys.executable, "-c", script, str(REPO / "tests"), str(tmp_path / "out")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


INTERNAL = ("``", "library.", "add_sample_arguments", "TrainConfig", "read the warning", "seed guide")


def test_help_speaks_to_the_user():
    """No markup or notes meant for developers in any --help, defaults shown, the built-in models named."""
    for path, parser in all_parsers():
        text = _flat(parser.format_help())
        leaked = [word for word in INTERNAL if word in text]
        assert not leaked, (path, leaked)
    train = _flat(build_train_parser().format_help())
    assert "LoRA rank: how much the LoRA can hold (default: 4)" in train
    assert "(default: constant)" in train and "(default: 512)" in train
    assert "a built-in name: tiny, tiny-world, tiny-sdxl, tiny-sd2" in train
    assert not re.search(r"[a-z]- [a-z]", train), "help wrapped inside a hyphenated word"
    sample = dict(all_parsers())[("sample",)]
    assert "sampling steps (default: 30)" in _flat(sample.format_help())
