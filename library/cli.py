"""The `lorasmith` command: one entry point, one subcommand per job.

Subcommands register themselves: each module below exposes
`register(subparsers)` that adds its parser and sets `func=handler`, where
`handler(args) -> int` returns the exit code. Packages outside `library/`
(dataset_tools, regularization, gui) plug in through the
`lorasmith.commands` entry-point group, so `library/` never imports them.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata

from library.errors import LorasmithError

# Modules inside library/ that contribute subcommands.
_LIBRARY_COMMAND_MODULES = (
    "library.training.cli",
    "library.demo",
    "library.config_cli",
    "library.models.cli",
    "library.lora.cli",
    "library.lora.tools.cli",
    "library.sampling.cli",
    "library.sampling.upscale_cli",
    "library.evaluation.cli",
    "library.evaluation.score_cli",
    "library.sweep.cli",
)

Register = Callable[[argparse._SubParsersAction], None]


def _registrars() -> list[tuple[str, Register]]:
    found: list[tuple[str, Register]] = []
    for mod_name in _LIBRARY_COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            # Only a module that is not written yet is skipped; a broken import
            # inside an existing module must surface.
            if exc.name == mod_name:
                continue
            raise
        found.append((mod_name, mod.register))
    for ep in metadata.entry_points(group="lorasmith.commands"):
        try:
            found.append((ep.value, ep.load()))
        except ModuleNotFoundError as exc:
            if exc.name and ep.value.startswith(exc.name):
                continue
            raise
    return found


def build_parser() -> argparse.ArgumentParser:
    from library.config_io import ArgumentParser

    parser = ArgumentParser(
        prog="lorasmith",
        description="Train, inspect, sample and compare Kohya-style LoRAs for Stable Diffusion.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, register in _registrars():
        register(sub)
    return parser


def run_handler(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand, turning our own errors into a one-screen message."""
    debug = bool(getattr(args, "debug", False))
    try:
        return int(handler(args) or 0)
    except LorasmithError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Accept --debug anywhere on the line, not only before the subcommand.
    debug = "--debug" in argv
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug or getattr(args, "debug", False)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return run_handler(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
