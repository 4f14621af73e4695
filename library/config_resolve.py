"""Where a run's config comes from: defaults < preset < config file < command-line flags.

Above library.config_io (readers, writers, flags), library.kohya_import and
library.presets, which each import only downward; this module combines them.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from library.config import TrainConfig
from library.config_io import (
    build_train_parser, cli_overrides, config_from_mapping, is_kohya_gui_config, parse_structured, read_config_file,
)
from library.errors import ConfigError
from library.kohya_import import import_kohya_config
from library.presets import load_preset


def load_config_source(
    path: str | os.PathLike[str], base: TrainConfig | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """A config file of any supported kind applied on top of `base`, then `overrides` (the CLI) on top.

    The overrides go in before any check the file's own values trigger (a kohya_ss
    file's inline sample prompts need output_dir, which the command line may give).
    """
    p = Path(path)
    if p.suffix.lower() == ".json" and p.is_file():
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Cannot read config file {p}: {exc}") from None
        data = parse_structured(text, ".json", str(p))
        if isinstance(data, dict) and is_kohya_gui_config(data):
            result = import_kohya_config(data, source=str(p), base=base)
            if result.unmapped:
                raise ConfigError(f"{p}: some kohya_ss settings have no lorasmith equivalent", result.unmapped)
            return result.finish(overrides)
    cfg = config_from_mapping(read_config_file(p), source=str(p), base=base)
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """defaults < preset < config file < CLI flags."""
    cfg = TrainConfig()
    if getattr(args, "preset", None):
        cfg = load_preset(args.preset)
    overrides = cli_overrides(args)
    if getattr(args, "config_file", None):
        return load_config_source(args.config_file, base=cfg, overrides=overrides)
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def parse_train_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = build_train_parser()
    args = parser.parse_args(argv)
    return resolve_config(args), args
