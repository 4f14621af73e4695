"""Everything that reads or writes a `TrainConfig`, generated from its fields.

The bottom layer of the config modules: library.kohya_import and
library.presets build on it, and library.config_resolve puts them together
(defaults < preset < config file < CLI flags). Config files are sd-scripts TOML
(sections flattened) or our JSON presets (only fields that differ from the
defaults); a kohya_ss GUI JSON is only recognised here.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import math
import os
import shlex
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from library.config import (
    CONFIG_VERSION,
    GROUPS,
    TrainConfig,
    alias_map,
    base_type,
    non_default_values,
    number_problem,
    option_fields,
    range_text,
    shown_value,
    spec_of,
    value_range,
)
from library.errors import ConfigError
from library.fileio import atomic_write_text

VERSION_KEY = "config_version"
PRESET_META_KEYS = ("name", "description", VERSION_KEY)
_SUPPRESS = argparse.SUPPRESS


# --- argparse -------------------------------------------------------------------

def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to a mistyped one (shared by config files and flags)."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return close[0] if close else None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; an option shows its default when the default says something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        quiet = default is None or default is False or default is _SUPPRESS or default == "" or default == []
        if quiet or not action.option_strings or "default" in text.lower():
            return text
        return f"{text} (default: {str(default).replace('%', '%%')})"

    def _split_lines(self, text: str, width: int) -> list[str]:
        """Wrap at spaces only: names such as tiny-world, sd-scripts or person-sdxl stay whole on one line."""
        import textwrap

        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width, break_on_hyphens=False)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: an unknown flag names the closest known flag.

    Subcommand parsers are built with this class too (argparse's default for
    `add_subparsers`), so a wrong flag after `lorasmith sample` is reported by
    `lorasmith sample` itself, not by the top-level parser.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("formatter_class") in (None, argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
            kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._seen_args = list(sys.argv[1:] if args is None else args)
        parsed, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(self.unknown_message(extra))
        return parsed, extra

    def unknown_message(self, extra: Sequence[str]) -> str:
        flags = [a for a in extra if a.startswith("-")]
        if not flags:
            return f"unrecognized arguments: {' '.join(extra)}"
        known = [s for action in self._actions for s in action.option_strings]
        flag = flags[0].split("=", 1)[0]
        close = did_you_mean(flag, known)
        hint = f": did you mean {close}?" if close else ""
        more = f" (and {', '.join(flags[1:])})" if len(flags) > 1 else ""
        return f"unrecognized argument {flag}{hint}{more}"

    def error(self, message: str):  # type: ignore[override]
        """One line and a pointer to --help, instead of a usage block of every flag.

        A mistyped flag is the likelier cause of a "required" error
        (`sample --outdir`), so it is named first.
        """
        known = [s for action in self._actions for s in action.option_strings]
        typed = [a for a in getattr(self, "_seen_args", ()) if a.startswith("--")]
        unknown = [a for a in typed if not any(k.startswith(a.split("=", 1)[0]) for k in known)]
        if unknown and self._subparsers is None:
            message = self.unknown_message(unknown)
        if "did you mean" not in message:
            message += f" (see `{self.prog} --help`)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    names: Iterable[str] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    required: Iterable[str] = (),
) -> None:
    """Add one flag per TrainConfig field (or the named subset).

    Flags default to SUPPRESS so that only what the user typed overrides files.
    Commands that read `args` directly instead of through `resolve_config`
    (sample, grid, inspect-model) pass `defaults` (usually `config_defaults(names)`)
    and `required`, so their flags keep the trainer's spelling, aliases and help.
    """
    wanted = set(names) if names is not None else None
    defaults = dict(defaults or {})
    required = set(required)
    unknown = (set(wanted or ()) | set(defaults) | required) - {f.name for f in option_fields()}
    if unknown:
        raise ValueError(f"not TrainConfig fields: {sorted(unknown)}")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in option_fields():
        if wanted is not None and f.name not in wanted:
            continue
        spec = spec_of(f)
        group = groups.setdefault(spec.group, parser.add_argument_group(spec.group))
        flags = [f"--{f.name}"] + [f"--{n}" for n in ((spec.flag,) if spec.flag else ()) + spec.aliases]
        kind = base_type(f.name)
        # argparse %-formats help text: a literal % ("~30% slower") must be doubled.
        kwargs: dict[str, Any] = {"dest": f.name, "default": defaults.get(f.name, _SUPPRESS),
                                  "help": spec.help.replace("%", "%%")}
        if f.name in required:
            kwargs["required"] = True
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kwargs["nargs"] = "*"
            kwargs["metavar"] = "KEY=VALUE"
        else:
            kwargs["type"] = _cli_type(f.name, kind)
            kwargs["metavar"] = kind.__name__.upper()
            if spec.choices is not None:
                kwargs["help"] += " {" + ", ".join(str(c) for c in spec.choices if c is not None) + "}"
        if f.name not in defaults:
            kwargs["help"] += _default_note(f, kind)
        if f.name == "text_encoder_lr" and "learning_rate_te2" in {x.name for x in option_fields()}:
            kwargs.update(nargs="+", action=_TextEncoderLrs)  # sd-scripts: one value, or TE1 TE2
        group.add_argument(*flags, **kwargs)


class _TextEncoderLrs(argparse.Action):
    """`--text_encoder_lr A [B]` as sd-scripts takes it: A for the text encoder(s), B for SDXL's second."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
        values = list(values)
        if len(values) > 2:
            parser.error(f"{option_string}: at most two values (text encoder 1 and 2), got {len(values)}")
        setattr(namespace, "text_encoder_lr", values[0])
        if len(values) == 2:
            setattr(namespace, "learning_rate_te2", values[1])


def _default_note(f: dataclasses.Field[Any], kind: type) -> str:
    """' (default: 4)' for flags whose argparse default is SUPPRESS (files may set them, so argparse cannot show it)."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is None or kind in (bool, list) or default == "" or "default" in spec_of(f).help.lower():
        return ""
    return f" (default: {str(default).replace('%', '%%')})"


def config_defaults(names: Iterable[str]) -> dict[str, Any]:
    """TrainConfig's default value for each named field (for `add_config_arguments(defaults=)`)."""
    cfg = TrainConfig()
    return {name: getattr(cfg, name) for name in names}


def _cli_type(name: str, kind: type) -> Any:
    def convert(text: str) -> Any:
        try:
            return coerce_value(name, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = kind.__name__
    return convert


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--config_file, --preset and --output_config: where a config comes from."""
    parser.add_argument("--config_file", default=None, help="TOML (sd-scripts), JSON preset, or kohya_ss GUI JSON config")
    parser.add_argument("--preset", default=None, help="a built-in or user preset name (see `lorasmith config presets`)")
    parser.add_argument("--output_config", action="store_true", help="write the effective config as TOML to <output_dir>/<output_name>.toml and exit")


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {f.name for f in option_fields()}
    return {k: v for k, v in vars(args).items() if k in names}


# --- values --------------------------------------------------------------------

_NONE_STRINGS = ("", "none", "null")


def coerce_value(name: str, value: Any, *, source: str = "") -> Any:
    """Convert a raw value (CLI text, TOML, JSON strings) to the field's type."""
    kind = base_type(name)
    where = f" in {source}" if source else ""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_STRINGS and kind is not str):
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind in (int, float):
            number = _to_number(value, kind)
            problem = number_problem(name, number)
            if problem and not math.isfinite(number):  # ranges are validate()'s: sample/grid give seed -1 a meaning
                raise ConfigError(f"{name}{where}: {problem}")
            return number
        if kind is list:
            if isinstance(value, str):
                return shlex.split(value)
            if isinstance(value, (list, tuple)):
                return [str(v) for v in value]
            raise ValueError
        if kind is str:
            return value if isinstance(value, str) else str(value)
    except (ValueError, TypeError, OverflowError):
        pass
    lo, hi = value_range(name) if kind in (int, float) else (None, None)
    hint = f" ({range_text(lo, hi)})" if lo is not None or hi is not None else ""
    raise ConfigError(f"{name}{where}: {shown_value(value)} is not a valid {kind.__name__}{hint}")


def _to_number(value: Any, kind: type) -> int | float:
    """CLI text or a file's number as an int (exactly, also '1e3') or a float; ValueError/OverflowError if not."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    if kind is float:
        return float(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip())
    number = float(value)
    if number != int(number):  # int(inf) raises OverflowError, int(nan) ValueError
        raise ValueError
    return int(number)


def config_from_mapping(
    values: Mapping[str, Any], *, source: str, base: TrainConfig | None = None
) -> TrainConfig:
    """Apply `values` (any accepted key names) on top of `base`.

    Unknown keys are errors with a "did you mean"; every problem is reported at once.
    """
    names = alias_map()
    updates: dict[str, Any] = {}
    problems: list[str] = []
    for key, raw in values.items():
        if key in PRESET_META_KEYS:
            continue
        target = names.get(key)
        if target is None:
            close = did_you_mean(key, names)
            hint = f" (did you mean {close!r}?)" if close else ""
            problems.append(f"unknown key {key!r}{hint}")
            continue
        if target == "text_encoder_lr" and isinstance(raw, (list, tuple)):
            # sd-scripts' nargs="*" option: its TOML holds a list, [TE1] or [TE1, TE2] (SDXL)
            if len(raw) > 2:
                problems.append(f"text_encoder_lr in {source}: at most two values (text encoder 1 and 2), got {len(raw)}")
                continue
            if len(raw) == 2:
                raw, second = raw[0], raw[1]
                try:
                    updates["learning_rate_te2"] = coerce_value("learning_rate_te2", second, source=source)
                except ConfigError as exc:
                    problems.append(str(exc))
            else:
                raw = raw[0] if raw else None
        try:
            updates[target] = coerce_value(target, raw, source=source)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(f"Cannot read the config from {source}", problems)
    return dataclasses.replace(base or TrainConfig(), **updates)


# --- files ------------------------------------------------------------------------

def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML or JSON config into a flat mapping (migrated to this version)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file not found: {p}", ["check the path given to --config_file"])
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read config file {p}: {exc}") from None
    suffix = p.suffix.lower()
    if suffix == ".toml":
        flat = flatten_sections(parse_structured(text, suffix, str(p)), str(p))
    elif suffix == ".json":
        data = parse_structured(text, suffix, str(p))
        if not isinstance(data, dict):
            raise ConfigError(f"{p} must hold a JSON object of option names and values")
        if is_kohya_gui_config(data):
            raise ConfigError(
                f"{p} is a kohya_ss GUI config",
                ["give it to --config_file, or convert it with `lorasmith config import-kohya`"],
            )
        flat = dict(data.get("config", data)) if isinstance(data.get("config"), dict) else dict(data)
    else:
        raise ConfigError(f"{p}: unknown config format {suffix!r}", ["use a .toml or .json file"])
    return migrate(flat, str(p))


MAX_NESTING = 32  # tables/lists inside each other; real configs use 2-3, deeper ones only crash parsers


def nesting_depth(data: Any) -> int:
    """How many dicts/lists deep `data` goes, counted without recursion (so any depth is safe)."""
    deepest, todo = 0, [(data, 1)]
    while todo:
        value, depth = todo.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        todo.extend((child, depth + 1) for child in children)
    return deepest


def parse_structured(text: str, suffix: str, source: str) -> Any:
    """TOML or JSON text (by `suffix`) parsed; bad syntax and nesting beyond MAX_NESTING are ConfigErrors."""
    kind = "TOML" if suffix == ".toml" else "JSON"
    try:
        data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except RecursionError:
        data = None
    except (ValueError, tomllib.TOMLDecodeError) as exc:  # ValueError also covers numbers with >4300 digits
        raise ConfigError(f"{source} is not valid {kind}: {str(exc)[:300]}", ["fix the place named above"]) from None
    if data is None or nesting_depth(data) > MAX_NESTING:
        raise ConfigError(f"{source}: tables or lists are nested more than {MAX_NESTING} deep",
                          ["config files need 2-3 levels; remove the extra nesting"])
    return data
def is_kohya_gui_config(data: Mapping[str, Any]) -> bool:
    """kohya_ss GUI files have keys no sd-scripts config has (library.kohya_import maps them)."""
    markers = {"LoRA_type", "max_resolution", "epoch", "lr_warmup", "model_list", "optimizer"}
    return len(markers & set(data)) >= 2


def flatten_sections(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """sd-scripts ignores TOML section names: merge every table into one mapping."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub_key, sub_value in flatten_sections(value, source).items():
                if sub_key in flat:
                    raise ConfigError(f"{source}: key {sub_key!r} appears in two sections", ["keep one of them"])
                flat[sub_key] = sub_value
        else:
            flat[key] = value
    return flat


# --- versions -----------------------------------------------------------------------

def _migrate_1_to_2(values: dict[str, Any]) -> dict[str, Any]:
    """Version 1 = files without a version (sd-scripts era): old optimizer switches."""
    out = dict(values)
    if out.pop("use_8bit_adam", False):
        out.setdefault("optimizer_type", "AdamW8bit")
    if out.pop("use_lion_optimizer", False):
        out.setdefault("optimizer_type", "Lion")
    return out


MIGRATIONS = {1: _migrate_1_to_2}


def migrate(values: dict[str, Any], source: str) -> dict[str, Any]:
    version = values.pop(VERSION_KEY, 1)
    if not isinstance(version, int) or version < 1:
        raise ConfigError(f"{source}: {VERSION_KEY} = {version!r} is not a version number")
    if version > CONFIG_VERSION:
        raise ConfigError(f"{source} was written by a newer lorasmith (config version {version}, this one reads up to {CONFIG_VERSION})", ["upgrade lorasmith"])
    while version < CONFIG_VERSION:
        values = MIGRATIONS[version](values)
        version += 1
    return values


# --- writers --------------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def config_to_toml(cfg: TrainConfig, *, only_changed: bool = False) -> str:
    """sd-scripts-readable TOML, one section per GUI group; None values omitted."""
    chosen = non_default_values(cfg) if only_changed else None
    lines = [f"{VERSION_KEY} = {CONFIG_VERSION}", ""]
    for group in GROUPS:
        body = []
        for f in option_fields():
            if spec_of(f).group != group:
                continue
            value = getattr(cfg, f.name)
            if value is None or (chosen is not None and f.name not in chosen):
                continue
            body.append(f"{f.name} = {_toml_value(value)}")
        if body:
            lines.append(f"[{group.lower().replace(' ', '_')}]")
            lines.extend(body)
            lines.append("")
    return "\n".join(lines)


def config_to_preset(cfg: TrainConfig, *, name: str = "", description: str = "") -> dict[str, Any]:
    """A sparse JSON preset: only the fields that differ from the defaults."""
    data: dict[str, Any] = {VERSION_KEY: CONFIG_VERSION}
    if name:
        data["name"] = name
    if description:
        data["description"] = description
    data.update(non_default_values(cfg))
    return data


def write_config(cfg: TrainConfig, path: str | os.PathLike[str]) -> Path:
    """Write TOML or a JSON preset, by the file's suffix, atomically."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        atomic_write_text(p, json.dumps(config_to_preset(cfg), indent=2) + "\n")
    else:
        atomic_write_text(p, config_to_toml(cfg))
    return p


def to_command_line(cfg: TrainConfig, program: str = "train_network.py") -> list[str]:
    """The equivalent command line (only fields that differ from the defaults)."""
    argv = [program]
    for name, value in non_default_values(cfg).items():
        if isinstance(value, bool):
            argv.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, list):
            argv.append(f"--{name}")
            argv.extend(value)
        elif value is not None:
            argv.extend([f"--{name}", str(value)])
    return argv


def command_string(cfg: TrainConfig, program: str = "python train_network.py") -> str:
    argv = to_command_line(cfg, "PROGRAM")[1:]
    return program + " " + " ".join(shlex.quote(a) for a in argv)


def build_train_parser(prog: str = "train_network.py") -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description="Train a Kohya-style LoRA (sd-scripts flags).")
    add_train_arguments(parser)
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--print_plan", action="store_true", help="validate, print the training plan and exit without training")
    add_config_arguments(parser)
