"""The Generate tab: `lorasmith sample` from a form, images shown as each run finishes.

The form is generated from the sample command's own argument parser
(`library.sampling.cli.add_sample_arguments`), so its fields, defaults and help
are the CLI's: one declaration, and a flag added to `lorasmith sample` appears
here too.  Generate turns the fields back into that command (every path checked
against the allowed folders, the arguments parsed by the same parser and the
request validated before anything is queued) and queues it; the sampler itself
is library.sampling's, run in a child process.  LoRAs are picked from the
training output folders the GUI knows and written as A1111 `<lora:NAME:W>`
tags; "Load from PNG" fills the form from an image's A1111 infotext, and
"Send to grid" pre-fills the Evaluate tab with this prompt and LoRA.
"""
from __future__ import annotations

import argparse
import atexit
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import gradio as gr

from gui.context import GuiContext
from gui.generate_queue import FAILED, QUEUED, GenerationQueue
from gui.safety import builtin_model_names
from library.errors import ConfigError, LorasmithError

# Where each CLI field sits on the page; a flag not named here lands under "More options".
MAIN_ROWS: tuple[tuple[str, ...], ...] = (
    ("pretrained_model_name_or_path", "vae", "embeddings_dir"),
    ("prompt",), ("negative_prompt",),
    ("sampler", "steps", "cfg_scale", "seed"),
    ("width", "height", "batch_size", "batch_count", "clip_skip"),
)
HIRES_ROWS: tuple[tuple[str, ...], ...] = (
    ("enable_hr", "hr_upscaler", "hr_scale", "denoising_strength"),
    ("hr_second_pass_steps", "hr_resize_x", "hr_resize_y"),
)
# Set by the page itself: the LoRA picker's folder, and PNGs are loaded by dropping them.
PAGE_SET = ("help", "lora_dir", "from_png")
PATH_FIELDS = ("pretrained_model_name_or_path", "vae", "init_image", "from_png")  # besides every *_dir
LORA_SLOTS = 4
MAX_SHOWN = 48
_LORA_TAG = re.compile(r"\s*<lora:([^:<>]+)(?::([+-]?[\d.]+))?>")


class FormError(ConfigError):
    """A bad form value, worded like the CLI's argparse message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit the GUI process
        raise FormError(f"sample settings: {message}", ["fix the field named above"])


@lru_cache(maxsize=1)
def sample_parser() -> argparse.ArgumentParser:
    """`lorasmith sample`'s parser: the single declaration of every field on this tab."""
    from library.sampling.cli import add_sample_arguments

    parser = _Parser(prog="lorasmith sample", add_help=False)
    add_sample_arguments(parser)
    return parser


def sample_actions() -> dict[str, argparse.Action]:
    """dest → argparse action for every field the form shows."""
    return {a.dest: a for a in sample_parser()._actions if a.dest not in PAGE_SET and a.option_strings}


def field_kind(action: argparse.Action) -> str:
    """checkbox, int, float or text: how the value is shown and written back."""
    if action.nargs == 0:
        return "checkbox"
    probe = action.default
    if action.type in (int, float):
        return action.type.__name__
    if isinstance(probe, bool) or probe is None or isinstance(probe, str):
        return "text"
    return "int" if isinstance(probe, int) else "float" if isinstance(probe, float) else "text"


def is_path_field(dest: str) -> bool:
    return dest.endswith("_dir") or dest in PATH_FIELDS


def more_fields() -> list[str]:
    placed = {d for rows in MAIN_ROWS + HIRES_ROWS for d in rows}
    return [d for d in sample_actions() if d not in placed]


# --- form → command ------------------------------------------------------------------------------
def lora_tags(loras: list[tuple[str | None, Any]]) -> str:
    """` <lora:NAME:W>` for each picked slot (A1111's spelling; weight written without trailing zeros)."""
    from library.sampling.infotext import format_number

    out = []
    for name, weight in loras:
        if name and str(name).strip():
            w = 1.0 if weight in (None, "") else float(weight)
            out.append(f" <lora:{str(name).strip()}:{format_number(w)}>")
    return "".join(out)


def _flag_value(dest: str, action: argparse.Action, value: Any, guard) -> str | None:
    kind = field_kind(action)
    if kind in ("int", "float"):
        if value is None or value == "":
            return None
        if kind == "int":
            if float(value) != int(float(value)):
                raise FormError(f"{dest}: {value} is not a whole number", [f"give a whole number for {dest}"])
            value = int(float(value))
        return str(value)
    text = "" if value is None else str(value)
    if dest not in ("prompt", "negative_prompt"):
        text = text.strip()
    if not text:
        return None
    if is_path_field(dest) and not (dest == "pretrained_model_name_or_path" and text in builtin_model_names()):
        text = str(guard.check(text, dest))
    elif dest == "hr_upscaler" and ("/" in text or "\\" in text):  # a model file by path (a bare name: --models_dir)
        text = str(guard.check(text, "hires upscaler model"))
    return text


def _is_default(action: argparse.Action, text: str) -> bool:
    """Whether a field still holds the CLI default (7 and 7.0 are the same CFG)."""
    if action.required or action.default is None:
        return False
    if field_kind(action) in ("int", "float"):
        return float(text) == float(action.default)
    return text == str(action.default)


def sample_command(values: dict[str, Any], loras: list[tuple[str | None, Any]], lora_dir: str | None, guard) -> list[str]:
    """`lorasmith sample` arguments for the form: fields at their CLI default are left out.

    `values` maps CLI dest names to widget values; LoRA slots become `<lora:NAME:W>` tags in the
    prompt with --lora_dir.  The result is parsed by the CLI's own parser and validated as a
    request here, so a bad value is named before anything is queued.
    """
    actions = sample_actions()
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise FormError("The form sent values for unknown sample fields", [f"unknown field {k!r}" for k in unknown])
    values = dict(values)
    tags = lora_tags(loras)
    values["prompt"] = (values.get("prompt") or "").strip() + tags
    if not values["prompt"].strip():
        raise FormError("Prompt is empty", ["describe the image to generate"])
    if not (values.get("output_dir") or "").strip():
        values["output_dir"] = "outputs/img2img" if (values.get("init_image") or "").strip() else "outputs/txt2img"
    argv = ["sample"]
    for dest, action in actions.items():
        if dest not in values:
            continue
        value = values[dest]
        if action.nargs == 0:  # store_true, or --flag/--no-flag
            if bool(value) != bool(action.default):
                argv.append(action.option_strings[0] if value else action.option_strings[-1])
            continue
        text = _flag_value(dest, action, value, guard)
        if text is None or (dest != "output_dir" and _is_default(action, text)):
            continue
        # "--flag=value" keeps a value that starts with '-' (a negative prompt "-blurry") from reading as a flag
        argv += [f"{action.option_strings[0]}={text}"] if text.startswith("-") and field_kind(action) == "text" \
            else [action.option_strings[0], text]
    if tags or any(f"<{kind}:" in values["prompt"] for kind in ("lora", "lyco")):
        if not (lora_dir or "").strip():
            raise FormError("LoRAs are used but the LoRA folder is empty", ["choose the folder that holds the LoRA files"])
        argv += ["--lora_dir", str(guard.check(lora_dir.strip(), "LoRA folder"))]
    check_command(argv)
    return argv


def check_command(argv: list[str]) -> None:
    """Parse with the CLI's parser and validate the request as `lorasmith sample` will (no model loaded)."""
    from library.sampling.cli import request_from_args
    from library.sampling.pipeline import validate_request

    args = sample_parser().parse_args(argv[1:])
    validate_request(request_from_args(args))


# --- LoRA folders -----------------------------------------------------------------------------------
def known_lora_folders(ctx: GuiContext, form_output_dir: str | None = None) -> list[str]:
    """Training output folders the GUI knows (the form's, then past runs', newest first), inside the allowed folders."""
    candidates = [form_output_dir] + [j.config.output_dir for j in reversed(ctx.jobs.jobs)]
    out: list[str] = []
    for folder in candidates:
        if not folder or not ctx.guard.allows(folder):
            continue
        path = str(ctx.guard.resolve(folder))
        if path not in out:
            out.append(path)
    return out


def lora_names(folder: str | None, guard) -> list[str]:
    """NAME of every NAME.safetensors under `folder` (subfolders as sub/NAME), as `<lora:NAME>` tags name them."""
    if not folder or not guard.allows(folder):
        return []
    root = guard.resolve(folder)
    if not root.is_dir():
        return []
    files = (p for p in root.rglob("*.safetensors") if p.is_file() and guard.allows(p))
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in files)


# --- PNG infotext → form ---------------------------------------------------------------------------
def split_lora_tags(prompt: str, slots: int = LORA_SLOTS) -> tuple[str, list[tuple[str, float]]]:
    """Move up to `slots` `<lora:NAME:W>` tags out of a prompt into picker slots; the rest stay in the text."""
    picked: list[tuple[str, float]] = []

    def take(m: re.Match) -> str:
        if len(picked) >= slots:
            return m.group(0)
        picked.append((m.group(1).strip(), float(m.group(2)) if m.group(2) else 1.0))
        return ""

    return _LORA_TAG.sub(take, prompt).strip(), picked


def fields_from_parameters(params: dict[str, str], lora_dir: str | None = None,
                           guard=None) -> tuple[dict[str, Any], list[str]]:
    """(field values, notes) from `parse_parameters`' dict, read by `lorasmith sample --from_png`'s own reader.

    Fields the infotext does not carry keep their value, except hires fix, which is switched off
    unless the infotext has it.  Notes say what was not restored: another model or VAE, settings
    this sampler cannot redo, and (with `lora_dir`) LoRAs missing there or differing from the
    files the image was made with (its `Lora hashes`).
    """
    from library.sampling.from_png import check_lora_hashes, settings_from_parameters

    settings = settings_from_parameters(params, "the PNG")
    actions = sample_actions()
    values = {"enable_hr": False, **settings.fields}
    notes = [f"not restored: {key}" for key in settings.not_restored]
    if settings.model and settings.model in builtin_model_names():
        values["pretrained_model_name_or_path"] = settings.model
    elif settings.model:
        notes.append(f"made with the model {settings.model!r}: check that the Model field names that file")
    if params.get("VAE"):
        notes.append(f"made with the VAE {params['VAE']!r}: check the VAE field")
    if lora_dir and guard is not None and guard.allows(lora_dir):
        try:
            check_lora_hashes(settings, str(guard.resolve(lora_dir)), "the PNG")
        except LorasmithError as exc:  # the CLI's words; its "--lora_dir" advice is the LoRA folder here
            found = [exc.summary] if exc.summary.startswith("<lora:") else []
            notes += found + [p for p in exc.problems if p.startswith("<lora:")] or [exc.summary]
    return {k: v for k, v in values.items() if k in actions}, notes


def read_png_fields(path: str, lora_dir: str | None = None, guard=None) -> tuple[dict[str, Any], list[tuple[str, float]], list[str]]:
    """(field values, LoRA slots, notes) from a PNG's A1111 parameters; LoRAs checked against `lora_dir`."""
    from library.sampling.infotext import parse_parameters, read_png_parameters

    values, notes = fields_from_parameters(parse_parameters(read_png_parameters(path)), lora_dir, guard)
    values["prompt"], loras = split_lora_tags(values.get("prompt", ""))
    return values, loras, notes


def grid_values(values: dict[str, Any], loras: list[tuple[str | None, Any]], lora_dir: str | None) -> dict[str, Any]:
    """The Evaluate tab's fields (by its form keys) for this prompt: the first LoRA becomes the grid's
    LoRA with a weight axis from 0 to its weight; further LoRAs stay in the prompt as tags."""
    picked = [(n, w) for n, w in loras if n and str(n).strip()]
    out = {"model": values.get("pretrained_model_name_or_path") or "", "prompt": values.get("prompt") or "",
           "negative": values.get("negative_prompt") or "", "steps": values.get("steps"),
           "cfg": values.get("cfg_scale"), "seed": values.get("seed"), "width": values.get("width"),
           "height": values.get("height"), "sampler": values.get("sampler") or "", "lora_dir": lora_dir or ""}
    if picked and lora_dir:
        from library.sampling.infotext import format_number

        name, weight = picked[0]
        w = 1.0 if weight in (None, "") else float(weight)
        out["lora"] = str(Path(lora_dir) / f"{str(name).strip()}.safetensors")
        out["x_type"], out["x_values"] = "LoRA weight", f"0-{format_number(w)} (+{format_number(w / 4)})"
        out["prompt"] = (out["prompt"].strip() + lora_tags(picked[1:])).strip()
    return out


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
        for row in MAIN_ROWS:
            self._row(row, actions)
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
        self.stop_btn.click(self.stop, outputs=self.message)
        self.timer.tick(self.refresh, inputs=self.shown, outputs=[self.gallery, self.shown, self.status],
                        show_progress="hidden")
        self.gallery.select(self.show_parameters, inputs=self.shown, outputs=self.parameters)
        slots = [c for slot in self.lora_slots for c in slot]
        self.png.upload(self.load_png, inputs=[self.png, self.lora_dir], outputs=[*self.fields.values(), *slots, self.message])
        refresh_inputs = [self.lora_dir]
        if self.training is not None and "output_dir" in getattr(self.training, "widgets", {}):
            refresh_inputs.append(self.training.widgets["output_dir"])
        lora_outputs = [self.lora_dir, *[n for n, _ in self.lora_slots]]
        self.lora_refresh.click(self.refresh_loras, inputs=refresh_inputs, outputs=lora_outputs)
        from gradio.context import Context

        if isinstance(Context.block, gr.Tab):  # opening the tab picks up runs that ended since
            Context.block.select(self.refresh_loras, inputs=refresh_inputs, outputs=lora_outputs)
        self.lora_dir.change(self.list_loras, inputs=self.lora_dir, outputs=[n for n, _ in self.lora_slots])
        self._wire_grid()

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
        tabs = next((b for b in blocks if isinstance(b, gr.Tabs)), None)
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

    def generate(self, data: dict) -> dict:
        values, loras, lora_dir = self._read(data)
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

    def load_png(self, path: str | None, lora_dir: str | None) -> dict:
        """Fill the fields from a dropped PNG (an upload: its bytes come from the browser, not a path)."""
        if not path:
            return {self.message: gr.skip()}
        try:
            values, loras, notes = read_png_fields(path, lora_dir, self.ctx.guard)
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
    if dest == "pretrained_model_name_or_path" and value is None:
        value = "tiny" if "tiny" in builtin_model_names() else ""
    return gr.Textbox(value="" if value is None else str(value), **common)
