"""`lorasmith train` (sd-scripts flags, config files, presets); `lorasmith demo` lives in library.demo.

`run_training(args)` is shared with the top-level train_network.py: resolve the
config, validate, then `--output_config` (write TOML, exit), `--print_plan`
(print the plan, exit) or train with a progress bar and, with
--progress_file, JSON-lines events for the GUI.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from library.config_io import add_train_arguments, write_config
from library.config_resolve import resolve_config
from library.config_validate import validate
from library.training.console import ConsoleEvents
from library.training.events import Commands, JsonLinesEvents, MultiEvents
from library.training.preflight import check_writable
from library.training.signals import stop_on_signals


def output_config(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    validate(cfg, for_training=False)
    if not cfg.output_dir:
        print("error: --output_config needs --output_dir (the TOML goes to <output_dir>/<output_name>.toml)", file=sys.stderr)
        return 2
    path = write_config(cfg, Path(cfg.output_dir) / f"{cfg.output_name}.toml")
    print(f"config written to {path}")
    return 0


def print_plan(args: argparse.Namespace) -> int:
    from library.data.advice import instance_token_advice
    from library.data.plan import format_plan
    from library.data.prepare import prepare_data
    from library.data.quality import plan_image_findings
    from library.training.vram_plan import vram_section

    cfg = resolve_config(args)
    for w in validate(cfg):
        print(f"warning: {w}", file=sys.stderr)
    prepared = prepare_data(cfg)
    print(format_plan(prepared.plan))
    for problem, fix in instance_token_advice([s.spec.class_tokens for lay in prepared.layouts for s in lay.subsets
                                               if not s.spec.is_reg]):
        print(f"warning: {problem}; {fix}")
    findings, measured = plan_image_findings(prepared)
    print(f"\nimage checks ({measured} training images; faces: lorasmith dataset check):")
    for finding in findings:
        print(f"warning: {finding.line()}")
    if not findings:
        print("  no blurry, small, elongated or near-duplicate images")
    print()
    print(vram_section(cfg))  # from the configs alone: no weights are loaded
    return 0


def run_training(args: argparse.Namespace, commands: Commands | None = None) -> int:
    """The whole CLI flow; our errors propagate to library.cli's one-screen printer."""
    if args.output_config:
        return output_config(args)
    if args.print_plan:
        return print_plan(args)
    from library.training.trainer import train

    cfg = resolve_config(args)
    validate(cfg)  # errors before the progress file is created; train() repeats it and reports the warnings
    check_writable(cfg)
    progress = JsonLinesEvents(cfg.progress_file) if cfg.progress_file else None
    events = MultiEvents(ConsoleEvents(), progress)
    commands = commands or Commands()
    try:
        with stop_on_signals(commands):
            result = train(cfg, events, commands)
    finally:
        if progress is not None:
            progress.close()
    return 130 if result.stopped else 0


def _train_handler(args: argparse.Namespace) -> int:
    return run_training(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    train_p = subparsers.add_parser("train", help="train a LoRA (sd-scripts flags, --config_file, --preset)")
    add_train_arguments(train_p)
    train_p.set_defaults(func=_train_handler)
