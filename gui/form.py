"""The training form, generated from `TrainConfig`.

Every field gets one widget, chosen from its type and `OptionSpec`; values
travel between the page and the config as a dict keyed by field name, never
as a positional list (the kohya_ss GUI's ~289 positional handler arguments
are how values ended up in the wrong field).  The conversion functions here
are pure so that form → config → form can be tested without a browser.
"""
from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from library.config import GROUPS, TrainConfig, base_type, is_optional, option_fields, spec_of
from library.config_io import config_from_mapping
from library.errors import ConfigError

UNSET = "(unset)"  # dropdown entry standing for None
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in option_fields())
MODEL_FIELD = "pretrained_model_name_or_path"  # the model picker: a path field offering built-ins and found models


def widget_kind(name: str) -> str:
    """Which widget a field gets: checkbox, dropdown, number, list, path, model or text."""
    spec = spec_of(_field(name))
    kind = base_type(name)
    if name == MODEL_FIELD:
        return "model"
    if kind is bool:
        return "checkbox"
    if spec.choices is not None:
        return "dropdown"
    if kind in (int, float):
        return "number"
    if kind is list:
        return "list"
    if spec.kind is not None:
        return "path"
    return "text"


def _field(name: str):
    for f in option_fields():
        if f.name == name:
            return f
    raise KeyError(name)


def dropdown_choices(name: str) -> list[str]:
    """Dropdown entries as strings; None becomes the UNSET entry."""
    return [UNSET if c is None else str(c) for c in spec_of(_field(name)).choices or ()]


def to_widget_value(name: str, value: Any) -> Any:
    """A config value as its widget shows it."""
    kind = widget_kind(name)
    if kind == "checkbox":
        return bool(value)
    if kind == "dropdown":
        return UNSET if value is None else str(value)
    if kind == "number":
        return value
    if kind == "list":
        return shlex.join(str(v) for v in value or [])
    return "" if value is None else str(value)


def from_widget_value(name: str, raw: Any) -> Any:
    """A widget's value as a config value (strings still go through config_io's coercion)."""
    kind = widget_kind(name)
    if kind == "dropdown":
        return None if raw in (None, UNSET) else raw
    if kind == "number":
        if raw is None or raw == "":
            return None
        return int(raw) if base_type(name) is int and float(raw) == int(raw) else raw
    if kind in ("text", "path", "model"):
        text = "" if raw is None else str(raw)
        if text.strip() == "" and is_optional(name):
            return None
        return text.strip() if kind in ("path", "model") else text
    if kind == "list":
        try:
            return shlex.split("" if raw is None else str(raw))
        except ValueError as exc:
            raise ConfigError(f"{name}: {raw!r} cannot be split into key=value items ({exc})",
                              ["close the quote or remove it"]) from None
    return raw


def config_to_values(cfg: TrainConfig) -> dict[str, Any]:
    """Field name → widget value for every field."""
    return {name: to_widget_value(name, getattr(cfg, name)) for name in FIELD_NAMES}


def values_to_config(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Widget values by field name → TrainConfig; bad values raise one ConfigError naming them."""
    unknown = [k for k in values if k not in FIELD_NAMES]
    if unknown:
        raise ConfigError("The form sent values for unknown fields", [f"unknown field {k!r}" for k in unknown])
    converted = {name: from_widget_value(name, raw) for name, raw in values.items()}
    return config_from_mapping(converted, source="the form", base=base)


def group_fields() -> dict[str, list[str]]:
    """GROUPS order → field names in declaration order."""
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    for f in option_fields():
        out[spec_of(f).group].append(f.name)
    return out


def label_of(name: str) -> str:
    return name


# The fields most users change first, per section; the rest sit under the section's "all options" toggle.
COMMON_FIELDS: dict[str, tuple[str, ...]] = {
    "Source model": ("pretrained_model_name_or_path", "vae"),
    "Folders": ("train_data_dir", "reg_data_dir", "output_dir", "output_name", "logging_dir"),
    "Dataset": ("caption_extension", "shuffle_caption", "keep_tokens", "flip_aug"),
    "Network": ("network_module", "network_dim", "network_alpha", "network_args", "network_weights"),
    "Optimizer and LR": ("optimizer_type", "optimizer_args", "learning_rate", "unet_lr", "text_encoder_lr",
                         "lr_scheduler", "lr_warmup_steps"),
    "Training": ("train_batch_size", "max_train_epochs", "max_train_steps", "seed", "clip_skip"),
    "Resolution and buckets": ("resolution", "enable_bucket", "cache_latents"),
    "Precision and memory": ("mixed_precision", "save_precision", "gradient_checkpointing"),
    "Noise and loss": ("noise_offset", "min_snr_gamma", "loss_type"),
    "Saving": ("save_every_n_epochs", "save_model_as", "save_state", "resume"),
    "Samples": ("sample_prompts", "sample_every_n_epochs", "sample_sampler"),
    "Advanced": ("progress_file",),
}
OPEN_SECTIONS = ("Source model", "Folders")  # the first screen answers "where do I start"


def section_fields(group: str, names: list[str]) -> tuple[list[str], list[str]]:
    """(common, all-options) fields of one section, each in declaration order."""
    common = set(COMMON_FIELDS.get(group, ()))
    return [n for n in names if n in common], [n for n in names if n not in common]


def section_of(name: str) -> str:
    return spec_of(_field(name)).group


def build_widgets(cfg: TrainConfig, extra: Mapping[str, Any] | None = None,
                  after: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Create one collapsible section per group with one widget per field (inside a gr.Blocks).

    Returns field name → component.  Each section shows its common fields; the
    others sit in a closed "all options" accordion inside it.  `extra` maps a
    group to a callable run at the top of that section (the LoRA type picker),
    `after` to one run under its common fields (what the picked model is).
    """
    import gradio as gr

    widgets: dict[str, Any] = {}
    for group, names in group_fields().items():
        if not names:
            continue
        with gr.Accordion(group, open=group in OPEN_SECTIONS, elem_id=f"group-{_slug(group)}",
                          elem_classes=["ls-section"]):
            if extra and group in extra:
                extra[group]()
            common, rest = section_fields(group, names)
            _widget_grid(common, cfg, widgets)
            if after and group in after:
                after[group]()
            if rest:
                with gr.Accordion(f"all options ({len(rest)} more)", open=False,
                                  elem_id=f"group-{_slug(group)}-all", elem_classes=["ls-all-options"]):
                    _widget_grid(rest, cfg, widgets)
    return widgets


def _widget_grid(names: list[str], cfg: TrainConfig, widgets: dict[str, Any]) -> None:
    import gradio as gr

    per_row = 2
    for start in range(0, len(names), per_row):
        with gr.Row():
            for name in names[start:start + per_row]:
                widgets[name] = make_widget(name, getattr(cfg, name))


def help_text(name: str) -> str:
    spec = spec_of(_field(name))
    parts = [spec.help]
    if spec.min is not None or spec.max is not None:
        lo = "" if spec.min is None else f"{spec.min:g}"
        hi = "" if spec.max is None else f"{spec.max:g}"
        parts.append(f"range {lo}…{hi}")
    if spec.kind:
        parts.append(f"({spec.kind})")
    return " · ".join(parts)


def make_widget(name: str, value: Any) -> Any:
    """One Gradio component for one field; elem_id `field-<name>` for tests and styling."""
    import gradio as gr

    spec = spec_of(_field(name))
    kind = widget_kind(name)
    common = {"label": label_of(name), "info": help_text(name), "elem_id": f"field-{name}"}
    shown = to_widget_value(name, value)
    if kind == "checkbox":
        return gr.Checkbox(value=shown, **common)
    if kind == "dropdown":
        return gr.Dropdown(choices=dropdown_choices(name), value=shown, allow_custom_value=False, **common)
    if kind == "number":
        # No minimum/maximum here: Gradio would clamp the number while it is typed and answer with an
        # unnamed toast; the range is checked by config_validate and shown under the field instead.
        is_int = base_type(name) is int
        return gr.Number(value=shown, precision=0 if is_int else None, step=1 if is_int else 0.0001, **common)
    if kind == "list":
        return gr.Textbox(value=shown, placeholder="key=value key=value", **common)
    if kind == "model":
        from library.config import BUILTIN_MODEL_NAMES

        # Typing a path stays possible (allow_custom_value); the Training tab fills the choices from the models folder.
        return gr.Dropdown(choices=[*BUILTIN_MODEL_NAMES], value=shown, allow_custom_value=True, filterable=True,
                           **common)
    if kind == "path":
        hint = {"dir": "folder path", "file": "file path"}.get(spec.kind, "file or folder path")
        return gr.Textbox(value=shown, placeholder=hint, **common)
    return gr.Textbox(value=shown, **common)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower())
