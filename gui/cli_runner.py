"""Run a `lorasmith` subcommand in a child process and collect its output.

Tools that load a model (grids, generated regularization sets) run this way, so
their memory and any crash stay out of the GUI process; the command is exactly
what a user could type.
"""
from __future__ import annotations

import subprocess
import sys

from library.errors import LorasmithError

DEFAULT_TIMEOUT_S = 3600


def lorasmith_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "library.cli", *args]


def clean_output(text: str) -> list[str]:
    """Lines of a command's output with tqdm's carriage-return redraws collapsed."""
    lines = []
    for line in text.split("\n"):  # not splitlines(): it also splits on the \r we collapse
        parts = [p for p in line.split("\r") if p.strip()]
        if parts:
            lines.append(parts[-1].rstrip())
    return lines


def run_lorasmith(args: list[str], timeout: float = DEFAULT_TIMEOUT_S) -> tuple[list[str], list[str]]:
    """(stdout lines, stderr lines) of a successful run; LorasmithError with the last lines when it fails.

    Kept apart because results are printed on stdout while progress bars go to stderr.
    """
    try:
        proc = subprocess.run(lorasmith_argv(*args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LorasmithError(f"`lorasmith {args[0]}` took longer than {timeout:.0f} s and was stopped") from None
    out, err = clean_output(proc.stdout), clean_output(proc.stderr)
    if proc.returncode != 0:
        raise LorasmithError(f"`lorasmith {' '.join(args[:2])}` failed (exit code {proc.returncode})", (out + err)[-12:])
    return out, err
