"""Validation and the training plan as the page shows them (pure functions, no Gradio)."""
from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from gui.form import help_text, values_to_config
from gui.safety import PathGuard
from library.config import TrainConfig, option_fields, spec_of
from library.config_validate import check_config
from library.errors import LorasmithError
from library.training.vram_plan import ESTIMATE_FIELDS

PLAN_FIELDS = (
    "train_data_dir", "reg_data_dir", "dataset_config", "resolution", "enable_bucket", "min_bucket_reso",
    "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale", "train_batch_size", "max_train_epochs",
    "max_train_steps", "gradient_accumulation_steps", "caption_extension", "skip_bad_images",
)
# The plan panel also shows the expected peak GPU memory, which these options change.
PLAN_FIELDS += tuple(n for n in ESTIMATE_FIELDS if n not in PLAN_FIELDS)
_GROUP = {f.name: spec_of(f).group for f in option_fields()}


def form_issues(values: Mapping[str, Any], guard: PathGuard, *, for_training: bool) -> tuple[
        TrainConfig | None, dict[str, str], dict[str, str]]:
    """(config or None, field → error, field → warning) for the form's current values."""
    try:
        cfg = values_to_config(values)
    except LorasmithError as exc:
        errors = {}
        for line in exc.problems or [str(exc)]:
            name = next((n for n in _GROUP if line.startswith(n + ":") or f"'{n}'" in line or line.startswith(n + " ")), "form")
            errors.setdefault(name, line)
        return None, errors, {}
    report = check_config(cfg, for_training=for_training)
    errors: dict[str, str] = {}
    warnings: dict[str, str] = {}
    for issue in report.errors:
        errors[issue.field] = errors[issue.field] + "; " + issue.message if issue.field in errors else issue.message
    for issue in report.warnings:
        warnings[issue.field] = warnings[issue.field] + "; " + issue.message if issue.field in warnings else issue.message
    for line in guard.config_problems(cfg):
        name = line.split(":", 1)[0]
        errors[name] = line
    return cfg, errors, warnings


def issues_markdown(errors: Mapping[str, str], warnings: Mapping[str, str]) -> str:
    """The validation panel: errors first, each with its section."""
    if not errors and not warnings:
        return "No problems found."
    lines = []
    for title, items, mark in (("Errors", errors, "✖"), ("Warnings", warnings, "!")):
        if items:
            lines.append(f"**{title}**")
            lines += [f"- {mark} *{_GROUP.get(name, 'Form')}* — {html.escape(msg)}" for name, msg in items.items()]
    return "\n".join(lines)


def field_info(name: str, error: str | None, warning: str | None) -> str:
    """A field's hover/info text, with its current problem in front."""
    if error:
        return f"ERROR: {error} — {help_text(name)}"
    if warning:
        return f"WARNING: {warning} — {help_text(name)}"
    return help_text(name)


def plan_text(cfg: TrainConfig | None, guard: PathGuard) -> str:
    """The training plan from library.data, or why there is none yet."""
    if cfg is None:
        return "The plan appears once the form has no type errors."
    if not cfg.train_data_dir and not cfg.dataset_config:
        return "Set train_data_dir (or dataset_config) to see the training plan."
    for name in ("train_data_dir", "reg_data_dir", "dataset_config"):
        value = getattr(cfg, name)
        if value and not guard.allows(value):
            return f"{name}: {value!r} is outside the allowed folders."
    try:
        from library.data.plan import format_plan
        from library.data.prepare import prepare_data
    except ImportError as exc:
        return f"The training plan is not available: {exc}"
    try:
        from library.training.vram_plan import vram_section

        cfg = guard.absolutize(cfg)
        return format_plan(prepare_data(cfg).plan) + "\n\n" + vram_section(cfg)
    except LorasmithError as exc:
        return "\n".join([f"No plan yet: {exc.summary}"] + [f"- {p}" for p in getattr(exc, "problems", [])])
