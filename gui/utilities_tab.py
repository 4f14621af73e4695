"""The Utilities tab: resize, merge and extract LoRAs (kohya_ss' Utilities) with the toolbox's own functions.

Each form is turned into the keyword arguments of `library.lora.tools` by a pure
function (`resize_request`, `merge_request`, `extract_request`) that checks every
path against the folders the GUI may use; the handler then calls the same
function as `lorasmith lora ...`, reporting progress per module to the page.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from gui.context import GuiContext
from gui.safety import builtin_model_names
from library.errors import ConfigError, LorasmithError

PRECISIONS = ("float", "fp16", "bf16")
DYNAMIC = ("(none)", "sv_ratio", "sv_fro", "sv_cumulative")


def _text(form: dict, name: str) -> str:
    return str(form.get(name) or "").strip()


def _file(form: dict, name: str, guard, what: str, *, model: bool = False) -> str:
    """A required path (or a built-in model name) from the form, inside the allowed folders."""
    value = _text(form, name)
    if not value:
        raise ConfigError(f"{what} is required")
    if model and value in builtin_model_names():
        return value
    return str(guard.check(value, what))


def _int_or_none(form: dict, name: str) -> int | None:
    value = form.get(name)
    return None if value in (None, "", 0) else int(value)


def resize_request(form: dict, guard) -> dict[str, Any]:
    """Keyword arguments for `resize_lora` from the resize form."""
    from library.lora.tools.resize import ResizeOptions

    method = form.get("dynamic_method") or DYNAMIC[0]
    opts = ResizeOptions(new_rank=int(form.get("new_rank") or 4), new_conv_rank=_int_or_none(form, "new_conv_rank"),
                         dynamic_method=None if method == DYNAMIC[0] else method,
                         dynamic_param=form.get("dynamic_param") if method != DYNAMIC[0] else None,
                         save_precision=form.get("save_precision") or None, verbose=True)
    return {"src": _file(form, "input", guard, "LoRA to resize"), "out": _file(form, "output", guard, "output LoRA"),
            "opts": opts, "overwrite": bool(form.get("overwrite"))}


def parse_lora_lines(text: str, guard) -> list:
    """One `FILE[:WEIGHT]` per line (or comma), each file inside the allowed folders."""
    from library.lora.tools.merge import LoRAWeight, parse_lora_spec

    items = [t.strip() for line in (text or "").splitlines() for t in line.split(",") if t.strip()]
    if not items:
        raise ConfigError("LoRA files are required", ["one FILE or FILE:WEIGHT per line"])
    specs = [parse_lora_spec(item) for item in items]
    return [LoRAWeight(str(guard.check(s.path, "LoRA file")), s.weight) for s in specs]


def merge_request(form: dict, guard) -> dict[str, Any]:
    """(into a model) merge_into_checkpoint kwargs with `base`; (into one LoRA) merge_loras kwargs without."""
    request: dict[str, Any] = {"loras": parse_lora_lines(form.get("loras", ""), guard),
                               "out": _file(form, "output", guard, "merge output"),
                               "save_precision": form.get("save_precision") or None,
                               "overwrite": bool(form.get("overwrite"))}
    if _text(form, "base"):
        request["base"] = _file(form, "base", guard, "base model", model=True)
    else:
        request["new_rank"] = _int_or_none(form, "new_rank")
        request["new_conv_rank"] = _int_or_none(form, "new_conv_rank")
    return request


def extract_request(form: dict, guard) -> dict[str, Any]:
    """Keyword arguments for `extract_lora` from the extract form."""
    from library.lora.tools.extract import ExtractOptions

    opts = ExtractOptions(dim=int(form.get("dim") or 4), conv_dim=_int_or_none(form, "conv_dim"),
                          clamp_quantile=float(form.get("clamp_quantile") or 0.99),
                          min_diff=float(form.get("min_diff") if form.get("min_diff") is not None else 0.01),
                          save_precision=form.get("save_precision") or None)
    return {"base": _file(form, "base", guard, "base model", model=True),
            "tuned": _file(form, "tuned", guard, "fine-tuned model", model=True),
            "out": _file(form, "output", guard, "output LoRA"), "opts": opts, "overwrite": bool(form.get("overwrite"))}


def run_resize(request: dict[str, Any], progress: Callable | None = None) -> str:
    from library.lora.tools.resize import resize_lora

    report = resize_lora(**request, progress=progress)
    summary = report.lines()[-1]
    return f"Wrote `{request['out']}`. {summary[:1].upper()}{summary[1:]}."


def run_merge(request: dict[str, Any], progress: Callable | None = None) -> str:
    from library.lora.tools.merge import merge_loras
    from library.lora.tools.merge_checkpoint import merge_into_checkpoint

    request = dict(request)
    if "base" in request:
        path = merge_into_checkpoint(request.pop("base"), request.pop("loras"), request.pop("out"), **request,
                                     progress=progress)
    else:
        path = merge_loras(request.pop("loras"), request.pop("out"), **request, progress=progress)
    return f"Wrote `{path}`."


def run_extract(request: dict[str, Any], progress: Callable | None = None) -> str:
    from library.lora.tools.extract import extract_lora

    report = extract_lora(**request, progress=progress)
    lines = report.lines()
    return f"Wrote `{request['out']}`. {lines[0]}; {lines[-1]}."


class UtilitiesTab:
    """Three forms (Resize, Merge, Extract), each with a Run button and a message line."""

    def __init__(self, ctx: GuiContext) -> None:
        self.ctx = ctx
        self.forms: dict[str, dict[str, gr.components.Component]] = {}
        self.messages: dict[str, gr.Markdown] = {}
        gr.Markdown("Post-process LoRAs like sd-scripts' `networks/*.py` tools. Paths must lie in the allowed folders; "
                    "outputs never replace an input, and an existing output is replaced only with *Overwrite*.")
        for name, build, request, run in (("resize", self._resize_form, resize_request, run_resize),
                                          ("merge", self._merge_form, merge_request, run_merge),
                                          ("extract", self._extract_form, extract_request, run_extract)):
            with gr.Tab(name.capitalize(), id=f"utilities-{name}"):
                self.forms[name] = build()
                button = gr.Button(name.capitalize(), variant="primary", elem_id=f"utilities-{name}-run")
                self.messages[name] = gr.Markdown(elem_id=f"utilities-{name}-message")
            button.click(self._handler(name, request, run), inputs=set(self.forms[name].values()),
                         outputs=self.messages[name])

    def _handler(self, name: str, request: Callable, run: Callable) -> Callable:
        def handle(data: dict, progress=gr.Progress()) -> str:  # noqa: B008 (Gradio's progress idiom)
            return self.run_form(name, {k: data[c] for k, c in self.forms[name].items()}, request, run, progress)
        return handle

    def run_form(self, name: str, form: dict, request: Callable, run: Callable, progress: Callable | None) -> str:
        """Validate the form, run the tool, and return the message to show (errors included)."""
        def report(done: int, total: int, what: str) -> None:
            if progress is not None:
                progress(done / max(1, total), desc=f"{name}: {what}")
        try:
            return run(request(form, self.ctx.guard), report)
        except LorasmithError as exc:
            return "**Error:** " + str(exc).replace("\n", "  \n")

    @staticmethod
    def _rank(label: str, value: int, elem_id: str, minimum: int = 0) -> gr.Number:
        return gr.Number(label=label, value=value, precision=0, minimum=minimum, elem_id=elem_id)

    @staticmethod
    def _common(f: dict, prefix: str) -> None:
        with gr.Row():
            f["save_precision"] = gr.Dropdown(list(PRECISIONS), value=None, label="Save precision (empty: default)",
                                              elem_id=f"{prefix}-precision")
            f["overwrite"] = gr.Checkbox(label="Overwrite an existing output", value=False,
                                         elem_id=f"{prefix}-overwrite")

    def _resize_form(self) -> dict:
        f: dict = {}
        with gr.Row():
            f["input"] = gr.Textbox(label="LoRA to resize", elem_id="resize-input")
            f["output"] = gr.Textbox(label="Output LoRA (.safetensors)", elem_id="resize-output")
        with gr.Row():
            f["new_rank"] = self._rank("New rank", 4, "resize-rank", minimum=1)
            f["new_conv_rank"] = self._rank("New conv rank (0: same)", 0, "resize-conv-rank")
            f["dynamic_method"] = gr.Dropdown(list(DYNAMIC), value=DYNAMIC[0], label="Dynamic method",
                                              elem_id="resize-dynamic")
            f["dynamic_param"] = gr.Number(label="Dynamic parameter", value=0.9, elem_id="resize-dynamic-param")
        self._common(f, "resize")
        return f

    def _merge_form(self) -> dict:
        f: dict = {}
        f["loras"] = gr.Textbox(label="LoRAs, one FILE or FILE:WEIGHT per line", lines=3, elem_id="merge-loras")
        with gr.Row():
            f["base"] = gr.Textbox(label="Base model to merge into (empty: merge into one LoRA)", elem_id="merge-base")
            f["output"] = gr.Textbox(label="Output (.safetensors, or a folder for diffusers)", elem_id="merge-output")
        with gr.Row():
            f["new_rank"] = self._rank("LoRA merge: new rank (0: concatenate, exact)", 0, "merge-rank")
            f["new_conv_rank"] = self._rank("LoRA merge: new conv rank (0: same)", 0, "merge-conv-rank")
        self._common(f, "merge")
        return f

    def _extract_form(self) -> dict:
        f: dict = {}
        with gr.Row():
            f["base"] = gr.Textbox(label="Base model", value="tiny", elem_id="extract-base")
            f["tuned"] = gr.Textbox(label="Fine-tuned / DreamBooth model", elem_id="extract-tuned")
            f["output"] = gr.Textbox(label="Output LoRA (.safetensors)", elem_id="extract-output")
        with gr.Row():
            f["dim"] = self._rank("Rank (dim)", 4, "extract-dim", minimum=1)
            f["conv_dim"] = self._rank("Conv rank (0: no conv modules)", 0, "extract-conv-dim")
            f["clamp_quantile"] = gr.Number(label="Clamp quantile (1: none)", value=0.99, minimum=0.01, maximum=1,
                                            elem_id="extract-clamp")
            f["min_diff"] = gr.Number(label="Min. text-encoder difference", value=0.01, minimum=0,
                                      elem_id="extract-min-diff")
        self._common(f, "extract")
        return f
