"""Validation and the training plan as the page shows them (pure functions, no Gradio)."""
from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from gui.form import help_text, values_to_config
from gui.model_info import ModelInfo, describe_model, family_issues
from gui.safety import PathGuard
from library.config import BUILTIN_MODEL_NAMES, TrainConfig, option_fields, spec_of
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
    """(config or None, field → error, field → warning) for the form's current values.

    The messages are config_validate's (what `lorasmith train` prints), checked on the
    config with relative paths taken inside the first allowed folder, where the run
    will look; the GUI adds what it alone knows: the allowed folders, an output folder
    that another run holds locked right now, and what the picked model is (a model the
    loader refuses, options of another model family: gui.model_info).
    """
    try:
        cfg = values_to_config(values)
    except LorasmithError as exc:
        errors = {}
        for line in exc.problems or [str(exc)]:
            name = next((n for n in _GROUP if line.startswith(n + ":") or f"'{n}'" in line or line.startswith(n + " ")), "form")
            errors.setdefault(name, line)
        return None, errors, {}
    outside = {line.split(":", 1)[0]: line for line in guard.config_problems(cfg)}
    checked = guard.absolutize(cfg) if not outside else cfg
    report = check_config(checked, for_training=for_training)
    errors: dict[str, str] = {}
    warnings: dict[str, str] = {}
    for issue in report.errors:
        errors[issue.field] = errors[issue.field] + "; " + issue.message if issue.field in errors else issue.message
    for issue in report.warnings:
        warnings[issue.field] = warnings[issue.field] + "; " + issue.message if issue.field in warnings else issue.message
    errors.update(outside)
    model_errors, model_warnings = family_issues(picked_model(cfg, guard), cfg)
    for name, msg in model_errors.items():
        errors.setdefault(name, msg)  # a missing file or a path outside keeps its own message
    for name, msg in model_warnings.items():
        warnings[name] = warnings[name] + "; " + msg if name in warnings else msg
    if for_training and cfg.output_dir and "output_dir" not in errors:
        from library.training.lock import lock_problem

        held = lock_problem(guard.resolve(cfg.output_dir))
        if held:
            errors["output_dir"] = f"output_dir: {held}; wait for it to finish, stop it, or choose another output_dir"
    return cfg, errors, warnings


def picked_model(cfg: TrainConfig | None, guard: PathGuard) -> ModelInfo | None:
    """What the form's base model is (gui.model_info), read cheaply; None when unset, missing or not allowed."""
    if cfg is None or not cfg.pretrained_model_name_or_path:
        return None
    value = cfg.pretrained_model_name_or_path
    if value in BUILTIN_MODEL_NAMES:
        return describe_model(value, v2=cfg.v2, v_parameterization=cfg.v_parameterization)
    if not guard.allows(value):
        return None
    return describe_model(value, guard.resolve(value), v2=cfg.v2, v_parameterization=cfg.v_parameterization)


def issues_markdown(errors: Mapping[str, str], warnings: Mapping[str, str]) -> str:
    """The validation panel as plain Markdown (errors first, each with its section)."""
    if not errors and not warnings:
        return "No problems found."
    lines = []
    for title, items, mark in (("Errors", errors, "✖"), ("Warnings", warnings, "!")):
        if items:
            lines.append(f"**{title}**")
            lines += [f"- {mark} *{_GROUP.get(name, 'Form')}* — {html.escape(msg)}" for name, msg in items.items()]
    return "\n".join(lines)


def issues_html(errors: Mapping[str, str], warnings: Mapping[str, str]) -> str:
    """The Errors panel: every problem with a link that opens its section and scrolls to the field.

    The element also carries the per-field messages as JSON (`data-fields`); the page's
    script puts each one under its field (see gui.page_assets).
    """
    import json

    fields = {**{n: {"level": "warning", "text": m} for n, m in warnings.items() if n in _GROUP},
              **{n: {"level": "error", "text": m} for n, m in errors.items() if n in _GROUP}}
    data = html.escape(json.dumps(fields), quote=True)
    head = (f'<div id="ls-issues" data-errors="{len(errors)}" data-warnings="{len(warnings)}" data-fields="{data}">')
    if not errors and not warnings:
        return head + '<div class="ls-ok">No problems found: ready to start.</div></div>'
    parts = [head]
    for title, items, cls in (("Errors", errors, "ls-error"), ("Warnings", warnings, "ls-warning")):
        if not items:
            continue
        parts.append(f'<div class="{cls}-title"><b>{title} ({len(items)})</b></div><ul class="ls-issue-list">')
        for name, msg in items.items():
            section = html.escape(_GROUP.get(name, "Form"))
            link = (f'<a href="#field-{html.escape(name)}" class="ls-issue-link" data-field="{html.escape(name)}">'
                    f'{html.escape(name)}</a>') if name in _GROUP else html.escape(name)
            parts.append(f'<li class="{cls}" data-field="{html.escape(name)}">{link} <i>({section})</i> — '
                         f'{html.escape(msg)}</li>')
        parts.append("</ul>")
    return "".join(parts) + "</div>"


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


def plan_html(cfg: TrainConfig | None, guard: PathGuard, errors: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(one-line summary, the plan as an HTML table) for the run panel.

    While a field the plan depends on has an error the plan is not computed from it:
    the panel says so ("stale") and names the fields, instead of showing old numbers.
    """
    blocking = [n for n in (errors or {}) if n in PLAN_FIELDS or n == "form"]
    if cfg is None or blocking:
        names = ", ".join(blocking) or "the form"
        msg = f"Plan not updated: fix {names} first."
        return msg, f'<div id="ls-plan" data-stale="1" class="ls-stale">{html.escape(msg)}</div>'
    if not cfg.train_data_dir and not cfg.dataset_config:
        msg = "Set train_data_dir (or dataset_config) to see the training plan."
        return msg, f'<div id="ls-plan" data-stale="0">{html.escape(msg)}</div>'
    for name in ("train_data_dir", "reg_data_dir", "dataset_config"):
        value = getattr(cfg, name)
        if value and not guard.allows(value):
            msg = f"{name}: {value!r} is outside the allowed folders."
            return msg, f'<div id="ls-plan" data-stale="1" class="ls-stale">{html.escape(msg)}</div>'
    try:
        from library.data.prepare import prepare_data
        from library.training.vram_plan import vram_section

        cfg = guard.absolutize(cfg)
        plan = prepare_data(cfg).plan
        vram = vram_section(cfg)
    except ImportError as exc:
        msg = f"The training plan is not available: {exc}"
        return msg, f'<div id="ls-plan" data-stale="0">{html.escape(msg)}</div>'
    except LorasmithError as exc:
        lines = [f"No plan yet: {exc.summary}"] + list(getattr(exc, "problems", []))
        return lines[0], ('<div id="ls-plan" data-stale="0" class="ls-warning">'
                          + "<br>".join(html.escape(x) for x in lines) + "</div>")
    return plan_summary(plan), _plan_table(plan, vram)


def summary_html(summary: str, table: str) -> str:
    """The plan's one line for the run panel, with the plan's stale flag for the tests and the CSS."""
    stale = 'data-stale="1"' in table
    return (f'<div id="ls-plan-summary" data-stale="{int(stale)}" class="{"ls-stale" if stale else ""}">'
            f'{html.escape(summary)}</div>')


def plan_summary(plan) -> str:
    bs = "/".join(str(b) for b in plan.batch_sizes)
    return (f"Plan: {plan.total_steps} steps = {plan.epochs} epoch(s) × {plan.steps_per_epoch} steps "
            f"({plan.items_per_epoch} items per epoch, batch {bs})")


def _plan_table(plan, vram: str) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(r.folder)}</td><td>{'reg' if r.is_reg else 'train'}</td><td class='n'>{r.images}</td>"
        f"<td class='n'>{r.repeats}</td><td class='n'>{r.images_used}</td><td class='n'>{r.items}</td></tr>"
        for r in plan.folders)
    totals = [("training items per epoch (images × repeats)", plan.train_items),
              ("regularization items per epoch", plan.reg_items), ("items per epoch", plan.items_per_epoch),
              ("batch size", "/".join(str(b) for b in plan.batch_sizes)), ("batches per epoch", plan.batches_per_epoch),
              ("gradient accumulation steps", plan.gradient_accumulation_steps),
              ("optimizer steps per epoch", plan.steps_per_epoch), ("epochs", plan.epochs),
              ("total optimizer steps", plan.total_steps)]
    if plan.held_out_images:
        totals.append(("validation images held out", plan.held_out_images))
    if plan.buckets:
        totals.append(("buckets", ", ".join(f"{b['resolution'][0]}x{b['resolution'][1]}: {b['count']}" for b in plan.buckets)))
    total_rows = "".join(f"<tr><th>{esc(k)}</th><td class='n'>{esc(str(v))}</td></tr>" for k, v in totals)
    notes = "".join(f"<li class='ls-warning'>{esc(w)}</li>" for w in plan.warnings)
    notes += "".join(f"<li>skipped: {esc(x)}</li>" for x in plan.skipped)
    return (f'<div id="ls-plan" data-stale="0" data-total-steps="{plan.total_steps}">'
            '<table class="ls-table" id="ls-plan-folders"><thead><tr><th>folder</th><th>kind</th><th>images</th>'
            f'<th>repeats</th><th>used</th><th>items</th></tr></thead><tbody>{rows}</tbody></table>'
            f'<table class="ls-table" id="ls-plan-totals"><tbody>{total_rows}</tbody></table>'
            + (f"<ul>{notes}</ul>" if notes else "")
            + f'<pre class="ls-vram">{esc(vram)}</pre></div>')
