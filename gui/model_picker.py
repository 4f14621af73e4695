"""The base-model picker's page parts: the models folder, its listing, and the line saying what the model is.

The picker itself is the form's `pretrained_model_name_or_path` field (a dropdown
that also takes a typed path, gui.form); this adds the folder whose checkpoints and
diffusers folders it lists, and the family line under it (gui.model_info). The
Training tab's form check fills the line and hides the options of other families;
the Generate tab uses `model_line` for its own model field.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from gui.model_info import ModelInfo, describe_model, info_html, list_models
from gui.safety import PathGuard
from library.config import BUILTIN_MODEL_NAMES


def choices(folder: str | None, guard: PathGuard) -> list[tuple[str, str]]:
    """(label, value) pairs: built-ins by name, found models by their path below `folder`."""
    root = guard.resolve(folder) if folder and str(folder).strip() and guard.allows(folder) else None
    out = []
    for value in list_models(folder, guard):
        label = value
        if root is not None and value not in BUILTIN_MODEL_NAMES:
            try:
                label = str(Path(value).relative_to(root))
            except ValueError:
                pass
        out.append((label, value))
    return out


def model_at(value: str | None, guard: PathGuard, **flags: bool) -> ModelInfo | None:
    """describe_model for a field value, with relative paths taken in the first allowed folder."""
    if not value or not str(value).strip():
        return None
    value = str(value).strip()
    if value in BUILTIN_MODEL_NAMES:
        return describe_model(value, **flags)
    if not guard.allows(value):
        return None
    return describe_model(value, guard.resolve(value), **flags)


class ModelFolder:
    """The models folder box and its Refresh button; `wire` keeps a model dropdown's choices in step."""

    def __init__(self, guard: PathGuard, elem_prefix: str = "", default: str | None = None) -> None:
        self.guard = guard
        with gr.Row():
            self.folder = gr.Textbox(value=default if default is not None else str(guard.roots[0]),
                                     label="Models folder: its .safetensors/.ckpt files and diffusers folders are "
                                           "offered in the model picker (or type a path there)",
                                     elem_id=f"{elem_prefix}models-dir", scale=4)
            self.refresh_btn = gr.Button("Refresh models", elem_id=f"{elem_prefix}models-refresh", scale=1)

    def wire(self, model_field: Any, demo_or_none: Any = None) -> None:
        self.refresh_btn.click(self.update, inputs=self.folder, outputs=model_field, show_progress="hidden")
        self.folder.submit(self.update, inputs=self.folder, outputs=model_field, show_progress="hidden")
        self.folder.blur(self.update, inputs=self.folder, outputs=model_field, show_progress="hidden")
        if demo_or_none is not None:
            demo_or_none.load(self.update, inputs=self.folder, outputs=model_field, show_progress="hidden")

    def update(self, folder: str | None) -> Any:
        return gr.update(choices=choices(folder, self.guard))


def model_line(value: str | None, guard: PathGuard, width: Any = None, height: Any = None,
               elem_id: str = "gen-model-facts", **flags: bool) -> str:
    """The Generate tab's family line, with a size hint where the family draws best at another size."""
    from gui.model_info import resolution_hint

    info = model_at(value, guard, **flags)
    text = info_html(info, elem_id)
    if info is not None and info.family is not None and width and height:
        hint = resolution_hint(info, f"{int(width)},{int(height)}", fix="width and height")
        if hint:
            text = text[:-len("</div>")] + f'<div class="ls-warning">{html.escape(hint)}</div></div>'
    return text
