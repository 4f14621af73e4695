"""The Generate tab: `lorasmith sample` from a form, images shown as each run finishes.

The fields come from the sample command's own parser (see `gui.generate_form`);
Generate queues that command (`gui.generate_queue`), so the sampler is
library.sampling's, run in a child process.  LoRAs are picked from the training
output folders the GUI knows and written as A1111 `<lora:NAME:W>` tags; "Load
from PNG" fills the form from an image's A1111 infotext, and "Send to grid"
pre-fills the Evaluate tab with this prompt and LoRA.
"""
from __future__ import annotations

import argparse
import atexit
from pathlib import Path
from typing import Any

import gradio as gr

from gui.context import GuiContext
from gui.generate_form import (
    HIRES_ROWS,
    LORA_SLOTS,
    MAIN_ROWS,
    embeddings_text,
    field_kind,
    grid_values,
    known_lora_folders,
    lora_names,
    more_fields,
    read_png_fields,
    sample_actions,
    sample_command,
)
from gui.generate_queue import FAILED, QUEUED, GenerationQueue
from gui.model_picker import choices, model_at, model_line
from gui.safety import builtin_model_names
from library.errors import LorasmithError

MAX_SHOWN = 48


def queue_text(queue: GenerationQueue) -> str:
    """One line per recent run: state, progress and (for a failed run) the end of its log."""
    lines = []
    for job in reversed(queue.jobs[-8:]):
        state = job.state
        if state in ("running", "stopping") and (count := job.step_count()):
            state += f" {count[0]}/{count[1]} steps"
        elif state == QUEUED:
            state += f" ({queue.queued().index(job) + 1} in line" + (", waiting for training)" if queue.busy() else ")")
        lines.append(f"#{job.id} {state}: {len(job.images())} image(s)")
        if job.state == FAILED:
            lines += ["    " + ln for ln in job.error_lines(6)]
    return "\n".join(lines) or "Nothing generated yet."


class GenerateTab:
    """Fields, LoRA picker, hires fix, gallery and queue of the Generate tab."""

    def __init__(self, ctx: GuiContext, training=None) -> None:
        self.ctx = ctx
        self.training = training
        self.queue = GenerationQueue(Path(ctx.jobs.jobs_dir).parent / "generate-jobs",
                                     busy=lambda: ctx.jobs.current() is not None
                                     and ctx.jobs.current().state in ("running", "stopping"))
        atexit.register(self.queue.shutdown)
        self._build()
        self._wire()

    # --- layout ------------------------------------------------------------------------------------------
    def _build(self) -> None:
        gr.Markdown("Runs `lorasmith sample` with A1111 prompt syntax (`(word:1.2)`, `{a|b}`, `<cfg_scale:5>`, "
                    "`__wildcard__`). Generations queue behind each other and wait while a training run is going.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                self._build_form()
            with gr.Column(scale=2):
                with gr.Row():
                    self.generate_btn = gr.Button("Generate", variant="primary", elem_id="gen-run")
                    self.stop_btn = gr.Button("Stop", elem_id="gen-stop")
                with gr.Row():
                    # A1111's "Generate forever": --batch_count 0, new seeds until Stop
                    self.forever_btn = gr.Button("Generate until stopped", elem_id="gen-forever")
                    self.grid_btn = gr.Button("Send to grid", elem_id="gen-to-grid")
                self.message = gr.Markdown(elem_id="gen-message")
                self.gallery = gr.Gallery(label="Images (newest first; click one for its parameters)", columns=3,
                                          height=420, object_fit="contain", elem_id="gen-gallery")
                self.status = gr.Textbox(label="Queue", lines=3, max_lines=10, interactive=False, elem_id="gen-queue")
                self.parameters = gr.Textbox(label="Parameters of the selected image", lines=3, interactive=False,
                                             elem_id="gen-parameters")
                self.png = gr.File(label="Load from PNG: drop an image to fill the fields from its parameters",
                                   file_types=[".png"], type="filepath", height=120, elem_id="gen-from-png")
                self.command = gr.Textbox(label="Command", lines=2, interactive=False, elem_id="gen-command")
        self.shown = gr.State([])
        self.timer = gr.Timer(1.0)

    def _build_form(self) -> None:
        actions = sample_actions()
        self.fields: dict[str, Any] = {}
        for i, row in enumerate(MAIN_ROWS):
            self._row(row, actions)
            if i == 0:  # under the model and embeddings_dir fields: what the model is, the names a prompt can use
                self.model_facts = gr.HTML(model_line(_default_model(), self.ctx.guard), elem_id="gen-model-facts-box")
                self.embeddings_info = gr.Markdown(elem_id="gen-embeddings-list")
        with gr.Accordion("LoRAs", open=True):
            folders = known_lora_folders(self.ctx)
            with gr.Row():
                self.lora_dir = gr.Dropdown(folders, value=folders[0] if folders else None, allow_custom_value=True,
                                            label="LoRA folder (training output folders; or type one)",
                                            elem_id="gen-lora-dir", scale=3)
                self.lora_refresh = gr.Button("Refresh folders and files", elem_id="gen-lora-refresh", scale=1)
            names = lora_names(folders[0] if folders else None, self.ctx.guard)
            self.lora_slots = []
            with gr.Row():
                for i in range(LORA_SLOTS):
                    with gr.Column(min_width=140):
                        name = gr.Dropdown(["", *names], value="", allow_custom_value=True, label=f"LoRA {i + 1}",
                                           elem_id=f"gen-lora-{i}")
                        weight = gr.Number(value=1.0, label="weight", step=0.05, elem_id=f"gen-lora-weight-{i}")
                    self.lora_slots.append((name, weight))
        with gr.Accordion("Hires fix", open=False):
            for row in HIRES_ROWS:
                self._row(row, actions)
        with gr.Accordion("More options", open=False):
            rest = more_fields()
            for start in range(0, len(rest), 3):
                self._row(tuple(rest[start:start + 3]), actions)

    def _optional(self, dest: str) -> list:
        """[the field's widget], or [] when this version of `lorasmith sample` has no such flag."""
        return [self.fields[dest]] if dest in self.fields else []

    def _row(self, dests: tuple[str, ...], actions: dict[str, argparse.Action]) -> None:
        present = [d for d in dests if d in actions]
        if not present:
            return
        with gr.Row():
            for dest in present:
                self.fields[dest] = make_field(dest, actions[dest])

    # --- events --------------------------------------------------------------------------------------------
    @property
    def form_inputs(self) -> set:
        return set(self.fields.values()) | {self.lora_dir} | {c for slot in self.lora_slots for c in slot}

    def _read(self, data: dict) -> tuple[dict[str, Any], list[tuple[Any, Any]], str | None]:
        values = {dest: data[comp] for dest, comp in self.fields.items()}
        loras = [(data[n], data[w]) for n, w in self.lora_slots]
        return values, loras, data[self.lora_dir]

    def _wire(self) -> None:
        outputs = [self.message, self.command, self.status]
        self.generate_btn.click(self.generate, inputs=self.form_inputs, outputs=outputs)
        if "batch_count" in self.fields:
            self.forever_btn.click(lambda data: self.generate(data, batch_count=0), inputs=self.form_inputs,
                                   outputs=outputs)
        else:
            self.forever_btn.visible = False
        self.stop_btn.click(self.stop, outputs=self.message)
        self.timer.tick(self.refresh, inputs=self.shown, outputs=[self.gallery, self.shown, self.status],
                        show_progress="hidden")
        self.gallery.select(self.show_parameters, inputs=self.shown, outputs=self.parameters)
        slots = [c for slot in self.lora_slots for c in slot]
        self.png.upload(self.load_png, inputs=[self.png, self.lora_dir, *self._optional("embeddings_dir")], outputs=[*self.fields.values(), *slots, self.message])
        refresh_inputs = [self.lora_dir]
        if self.training is not None and "output_dir" in getattr(self.training, "widgets", {}):
            refresh_inputs.append(self.training.widgets["output_dir"])
        lora_outputs = [self.lora_dir, *[n for n, _ in self.lora_slots]]
        self.lora_refresh.click(self.refresh_loras, inputs=refresh_inputs, outputs=lora_outputs)
        from gradio.context import Context

        if isinstance(Context.block, gr.Tab):  # opening the tab picks up runs that ended since
            Context.block.select(self.refresh_loras, inputs=refresh_inputs, outputs=lora_outputs)
        self.lora_dir.change(self.list_loras, inputs=self.lora_dir, outputs=[n for n, _ in self.lora_slots])
        self._wire_model()
        for emb in self._optional("embeddings_dir"):
            emb.change(lambda folder: embeddings_text(folder, self.ctx.guard), inputs=emb, outputs=self.embeddings_info)
        self._wire_grid()

    def _wire_model(self) -> None:
        """The family line follows the model and the size; models_dir (or the first allowed folder) fills the picker."""
        model = self.fields.get("pretrained_model_name_or_path")
        if model is None:
            return
        sizes = self._optional("width") + self._optional("height")
        line = lambda value, *wh: model_line(value, self.ctx.guard, *wh)  # noqa: E731
        for comp in [model, *sizes]:
            comp.change(line, inputs=[model, *sizes], outputs=self.model_facts, show_progress="hidden")
        folders = self._optional("models_dir")

        def listing(folder: str | None = None) -> dict:
            return gr.update(choices=choices(folder or str(self.ctx.guard.roots[0]), self.ctx.guard))

        for comp in folders:
            comp.blur(listing, inputs=comp, outputs=model, show_progress="hidden")
        from gradio.context import Context

        if isinstance(Context.block, gr.Tab):  # opening the tab lists the models found since
            Context.block.select(listing, inputs=folders, outputs=model, show_progress="hidden")

    def _wire_grid(self) -> None:
        """Send to grid fills the Evaluate tab's fields, found by their elem_ids (built before this tab)."""
        from gradio.context import Context

        blocks = Context.root_block.blocks.values() if Context.root_block is not None else []
        by_id = {b.elem_id: b for b in blocks if getattr(b, "elem_id", None)}
        keys = {"model": "grid-model", "prompt": "grid-prompt", "negative": "grid-negative", "steps": "grid-steps",
                "cfg": "grid-cfg", "seed": "grid-seed", "width": "grid-width", "height": "grid-height",
                "sampler": "grid-sampler", "lora_dir": "grid-lora-dir", "lora": "grid-lora",
                "x_type": "grid-x-type", "x_values": "grid-x-values"}
        self.grid_fields = {k: by_id[e] for k, e in keys.items() if e in by_id}
        here = Context.block  # this tab, inside the app's Tabs: switching to "evaluate" shows the grid form
        tabs = here.parent if isinstance(here, gr.Tab) and isinstance(here.parent, gr.Tabs) else None
        if not self.grid_fields:
            self.grid_btn.visible = False
            return
        outputs = [*self.grid_fields.values(), self.message] + ([tabs] if tabs is not None else [])

        def send(data: dict) -> dict:
            values, loras, lora_dir = self._read(data)
            filled = grid_values(values, loras, lora_dir)
            out = {self.grid_fields[k]: v for k, v in filled.items() if k in self.grid_fields}
            out[self.message] = "Sent to the Evaluate tab's grid form: set the axes there and press Make grid."
            if tabs is not None:
                out[tabs] = gr.Tabs(selected="evaluate")
            return out

        self.grid_btn.click(send, inputs=self.form_inputs, outputs=outputs)

    def generate(self, data: dict, **overrides: Any) -> dict:
        values, loras, lora_dir = self._read(data)
        values.update(overrides)
        info = model_at(values.get("pretrained_model_name_or_path"), self.ctx.guard)
        if info is not None and info.refusal:  # the loader would refuse it: say so now, not from the child's log
            return {self.message: "**Not queued:** " + info.refusal}
        try:
            argv = sample_command(values, loras, lora_dir, self.ctx.guard)
        except LorasmithError as exc:
            return {self.message: "**Not queued:** " + str(exc).replace("\n", "  \n")}
        job = self.queue.submit(argv)
        import shlex

        where = "started" if job.state != QUEUED else f"queued ({len(self.queue.queued())} waiting)"
        return {self.message: f"Generation #{job.id} {where}.", self.command: "lorasmith " + shlex.join(argv),
                self.status: queue_text(self.queue)}

    def stop(self) -> str:
        answer = self.queue.stop()
        dropped = self.queue.cancel_queued()
        extra = f"; {dropped} queued generation(s) dropped" if dropped else ""
        if answer == "nothing is generating":
            return "Nothing is generating" + extra + "."
        if answer == "killed":
            return "Generation killed" + extra + "."
        return "Stopping the generation (Stop again kills it)" + extra + "."

    def refresh(self, shown: list[str] | None) -> dict:
        self.queue.poll()
        images = [str(p) for job in reversed(self.queue.jobs[-12:]) for p in reversed(job.images())
                  if p.is_file() and self.ctx.guard.allows(p)][:MAX_SHOWN]
        out: dict = {self.status: queue_text(self.queue)}
        if images != list(shown or []):
            out[self.gallery], out[self.shown] = images, images
        else:
            out[self.gallery], out[self.shown] = gr.skip(), gr.skip()
        return out

    def show_parameters(self, shown: list[str], evt: gr.SelectData) -> str:
        if not shown or evt.index is None or evt.index >= len(shown) or not self.ctx.guard.allows(shown[evt.index]):
            return ""
        from PIL import Image

        with Image.open(shown[evt.index]) as img:
            return str(img.info.get("parameters", ""))

    def load_png(self, path: str | None, lora_dir: str | None, embeddings_dir: str | None = None) -> dict:
        """Fill the fields from a dropped PNG (an upload: its bytes come from the browser, not a path)."""
        if not path:
            return {self.message: gr.skip()}
        try:
            values, loras, notes = read_png_fields(path, lora_dir, self.ctx.guard, embeddings_dir)
        except LorasmithError as exc:
            return {self.message: "**Cannot load the PNG:** " + str(exc).replace("\n", "  \n")}
        out: dict = {self.fields[d]: v for d, v in values.items() if d in self.fields}
        for i, (name, weight) in enumerate(self.lora_slots):
            picked = loras[i] if i < len(loras) else ("", 1.0)
            out[name], out[weight] = picked[0], picked[1]
        text = f"Loaded {len(values)} field(s) and {len(loras)} LoRA(s) from the PNG."
        out[self.message] = text + "".join(f"  \n- {n}" for n in notes)
        return out

    def refresh_loras(self, current: str | None, form_output_dir: str | None = None) -> list:
        folders = known_lora_folders(self.ctx, form_output_dir)
        folder = current or (folders[0] if folders else None)
        return [gr.Dropdown(choices=folders, value=folder), *self.list_loras(folder)]

    def list_loras(self, folder: str | None) -> list:
        names = ["", *lora_names(folder, self.ctx.guard)]
        return [gr.Dropdown(choices=names) for _ in self.lora_slots]


def _default_model() -> str:
    return "tiny" if "tiny" in builtin_model_names() else ""


def make_field(dest: str, action: argparse.Action) -> Any:
    """One widget per CLI flag: label = the flag's name, info = its --help text, value = its default."""
    kind = field_kind(action)
    common = {"label": dest, "info": action.help, "elem_id": f"gen-{dest}"}
    if kind == "checkbox":
        return gr.Checkbox(value=bool(action.default), **common)
    if kind in ("int", "float"):
        return gr.Number(value=action.default, precision=0 if kind == "int" else None,
                         step=1 if kind == "int" else 0.05, **common)
    if action.choices:
        return gr.Dropdown([str(c) for c in action.choices], value=None if action.default is None else str(action.default),
                           **common)
    if dest == "sampler":
        from library.sampling.sampler_registry import sampler_names

        return gr.Dropdown(sampler_names(), value=action.default, allow_custom_value=True, **common)
    if dest in ("prompt", "negative_prompt"):
        common["info"] = None if dest == "negative_prompt" else common["info"]
        return gr.Textbox(value=action.default or "", lines=3 if dest == "prompt" else 2, **common)
    value = action.default
    if dest == "pretrained_model_name_or_path":  # the model picker: built-ins and found models, or a typed path
        return gr.Dropdown(list(builtin_model_names()), value=_default_model() if value is None else str(value),
                           allow_custom_value=True, filterable=True, **common)
    return gr.Textbox(value="" if value is None else str(value), **common)
