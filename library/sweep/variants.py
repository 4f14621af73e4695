"""A sweep's variants: `--vary field=a,b,c` (or a sweep file's `[vary]` table) expanded into configs.

Every combination of the varied values is one variant (in the order the fields were
given, the last field changing fastest, like nested loops). A variant is the base
config with its values applied, its own output folder `<sweep_dir>/<name>` and the
output name `<output_name>_<name>`, where the name spells its values
(`dim-8_lr-0.5`). Each variant's config is checked before anything runs, and a
problem names the variant and the field.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from library.config import TrainConfig, alias_map
from library.config_io import coerce_value, did_you_mean
from library.errors import ConfigError

# Fields a sweep sets itself (or that make no sense to vary).
NOT_VARIABLE = frozenset({"output_dir", "output_name", "resume", "resume_allow_changes", "progress_file",
                          "logging_dir", "log_prefix", "log_with"})

# Short names for the folder and file names of the usual fields; others use the field name.
SHORT_NAMES = {
    "network_dim": "dim", "network_alpha": "alpha", "learning_rate": "lr", "unet_lr": "unet_lr",
    "text_encoder_lr": "te_lr", "optimizer_type": "opt", "lr_scheduler": "sched", "max_train_epochs": "epochs",
    "max_train_steps": "steps", "train_batch_size": "batch", "ema_decay": "ema", "network_module": "module",
    "min_snr_gamma": "snr_gamma", "resolution": "res", "network_dropout": "dropout",
}
MAX_VARIANTS = 256  # a typo such as 8,16,...,1024 x 10 fields should not queue days of training


@dataclass(frozen=True)
class Variant:
    """One combination: its name, the values it sets (field -> value) and its full config."""

    name: str
    values: dict[str, Any]
    config: TrainConfig

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)


def split_values(text: str) -> list[str]:
    """`8,16,32` -> ['8', '16', '32']; a JSON list `["512,768", "512"]` for values holding commas."""
    text = text.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a JSON list ({exc})") from None
        if not isinstance(parsed, list):
            raise ValueError(f"{text!r} is not a list")
        return [v if isinstance(v, str) else json.dumps(v) for v in parsed]
    return [v.strip() for v in text.split(",")]


def parse_vary(items: list[str]) -> list[tuple[str, list[Any]]]:
    """`--vary` arguments -> [(field, [values…])], values converted to the field's type.

    Raises one ConfigError listing every bad item: no `=`, unknown or unvariable field,
    an empty or repeated value, a value that is not of the field's type, a field given twice.
    """
    names = alias_map()
    out: list[tuple[str, list[Any]]] = []
    problems: list[str] = []
    for item in items:
        key, sep, rest = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            problems.append(f"--vary {item!r}: write FIELD=VALUE1,VALUE2 (e.g. --vary network_dim=8,16,32)")
            continue
        try:
            raw = split_values(rest)
        except ValueError as exc:
            problems.append(f"--vary {key}: {exc}")
            continue
        try:
            out.append(checked_values(key, raw, names, "--vary"))
        except ConfigError as exc:
            problems.extend(exc.problems or [exc.summary])
    problems += _repeated_fields(out)
    if problems:
        raise ConfigError("Cannot read the sweep's --vary options", problems)
    return out


def checked_values(key: str, raw: list[Any], names: dict[str, str] | None = None,
                   source: str = "--vary") -> tuple[str, list[Any]]:
    """(field, typed values) for one varied field; ConfigError naming the field and the bad value."""
    names = names or alias_map()
    field = names.get(key)
    if field is None:
        close = did_you_mean(key, names)
        raise ConfigError("bad field", [f"{source} {key}: unknown field" + (f" (did you mean {close!r}?)" if close else "")])
    if field in NOT_VARIABLE:
        raise ConfigError("bad field", [(f"{source} {field}: set by the sweep itself (each variant gets its own "
                                         "output folder, name and logs); it cannot be varied")])
    problems, values = [], []
    for value in raw:
        if isinstance(value, str) and not value.strip():
            problems.append(f"{source} {field}: an empty value (remove the extra comma)")
            continue
        try:
            typed = coerce_value(field, value.strip() if isinstance(value, str) else value, source=source)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if typed in values:
            problems.append(f"{source} {field}: {value!r} is given twice")
        values.append(typed)
    if problems:
        raise ConfigError("bad values", problems)
    if not values:
        raise ConfigError("no values", [f"{source} {field}: give at least one value"])
    return field, values


def _repeated_fields(vary: list[tuple[str, list[Any]]]) -> list[str]:
    seen: set[str] = set()
    repeated = []
    for field, _ in vary:
        if field in seen:
            repeated.append(f"--vary {field}: given twice; list all its values in one --vary")
        seen.add(field)
    return repeated


def merge_vary(first: list[tuple[str, list[Any]]], then: list[tuple[str, list[Any]]]) -> list[tuple[str, list[Any]]]:
    """The sweep file's fields, with a command-line --vary of the same field replacing the file's values."""
    override = dict(then)
    merged = [(f, override.pop(f) if f in override else v) for f, v in first]
    return merged + [(f, v) for f, v in then if f in override]


def value_text(value: Any) -> str:
    """A value as it appears in a variant's name: 8, 0.0001, 1e-05, on/off, AdamW, 512+768."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, float):
        text = f"{value:g}" if float(f"{value:g}") == value else repr(value)
    elif isinstance(value, list):
        text = "+".join(str(v) for v in value) or "none"
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+\-]+", "+", text).strip("+.") or "x"


def variant_name(values: dict[str, Any]) -> str:
    """`{"network_dim": 8, "learning_rate": 0.5}` -> `dim-8_lr-0.5`."""
    return "_".join(f"{SHORT_NAMES.get(field, field)}-{value_text(v)}" for field, v in values.items())


def expand(base: TrainConfig, vary: list[tuple[str, list[Any]]], sweep_dir: Path) -> list[Variant]:
    """Every combination as a Variant with its own folder and output name (configs not checked yet)."""
    if not vary:
        raise ConfigError("a sweep needs at least one --vary FIELD=VALUES (or a [vary] table in --sweep_file)")
    count = 1
    for _, values in vary:
        count *= len(values)
    if count > MAX_VARIANTS:
        raise ConfigError(f"the sweep has {count} variants; at most {MAX_VARIANTS} run in one sweep",
                          ["vary fewer fields or values, or split the sweep"])
    fields = [f for f, _ in vary]
    variants: list[Variant] = []
    for combo in itertools.product(*(values for _, values in vary)):
        values = dict(zip(fields, combo))
        name = variant_name(values)
        cfg = dataclasses.replace(
            base, **values, output_dir=str(sweep_dir / name), output_name=f"{base.output_name}_{name}",
            log_prefix=f"{base.log_prefix or ''}{name}-" if base.logging_dir else base.log_prefix, resume=None,
            progress_file=None)
        variants.append(Variant(name, values, cfg))
    names = [v.name for v in variants]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ConfigError("two variants get the same folder name", [
            f"{n}: values differ only in characters a folder name cannot hold; use distinct values" for n in clashes])
    return variants


def check_variants(variants: list[Variant], *, scan_data: bool = True) -> None:
    """Validate every variant's config (and scan its dataset) before any runs; one error naming each bad variant."""
    from library.config_validate import check_config
    from library.errors import LorasmithError

    problems: list[str] = []
    for v in variants:
        report = check_config(v.config)
        problems += [f"variant {v.name}: {issue.message}" for issue in report.errors]
        if report.errors or not scan_data:
            continue
        try:
            from library.data.prepare import prepare_data

            prepare_data(v.config)
        except LorasmithError as exc:
            problems += [f"variant {v.name}: {exc.summary}"] + [f"variant {v.name}: {p}" for p in exc.problems]
    if problems:
        raise ConfigError("Some sweep variants cannot run; nothing was started", problems)
