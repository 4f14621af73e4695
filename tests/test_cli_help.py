"""`--help` of every command: every option's help renders, and help stays light (issue 24)."""
from __future__ import annotations

import argparse
import re

import pytest

from library.cli import build_parser
from library.config_io import build_train_parser


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
