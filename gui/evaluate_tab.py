"""The Evaluate tab: an X/Y/Z grid form → `lorasmith grid` in a subprocess → a zoomable gallery.

The grid runs as the same CLI a user would type (library.evaluation does the
work), so loading a model for the grid never grows or crashes the GUI process.
Clicking an image shows the parameters written into its PNG.
"""
from __future__ import annotations

import glob
import time
from pathlib import Path

import gradio as gr
from PIL import Image

from gui.cli_runner import CliTask, run_lorasmith, task_html
from gui.context import GuiContext
from gui.safety import builtin_model_names
from library.errors import ConfigError, LorasmithError

AXIS_TYPES = ("Seed", "LoRA", "LoRA weight", "CFG Scale", "Steps", "Sampler", "Prompt S/R", "Negative S/R",
              "Checkpoint", "Clip skip", "Size", "Denoising")
NONE = "(none)"
GRID_TIMEOUT_S = 3600
POLL_S = 0.5


def grid_command(form: dict, guard) -> list[str]:
    """The `lorasmith grid` arguments for the form; every path checked against the allowed folders."""
    model = (form["model"] or "").strip()
    if not model:
        raise ConfigError("Base model is required", ["'tiny' or a checkpoint file in an allowed folder"])
    if model not in builtin_model_names():
        model = str(guard.check(model, "base model"))
    out = str(guard.check(form["output_dir"] or "grids", "grid output folder"))
    argv = ["grid", "--pretrained_model_name_or_path", model,
            "--prompt", form["prompt"], "--negative_prompt", form["negative"] or "",
            "--steps", str(int(form["steps"])), "--cfg_scale", str(form["cfg"]), "--seed", str(int(form["seed"])),
            "--width", str(int(form["width"])), "--height", str(int(form["height"])), "--output_dir", out]
    if form["sampler"]:
        argv += ["--sampler", form["sampler"]]
    for axis in ("x", "y", "z"):
        kind, values = form[f"{axis}_type"], (form[f"{axis}_values"] or "").strip()
        if kind and kind != NONE and values:
            if kind in ("LoRA", "Checkpoint"):
                values = _checked_files(values, guard, kind)
            argv += [f"--{axis}_type", kind, f"--{axis}_values", values]
    if form["lora"]:
        argv += ["--lora", _checked_files(form["lora"], guard, "LoRA")]
    lora_dir = (form.get("lora_dir") or "").strip()
    if lora_dir:  # <lora:NAME> tags in the prompt resolve inside this folder only (the CLI refuses ../ and /abs)
        argv += ["--lora_dir", str(guard.check(lora_dir, "LoRA folder for <lora:NAME> tags"))]
    init = (form.get("init_image") or "").strip()
    if init:  # img2img grid; the strength only matters then (left out: the sampler's default)
        argv += ["--init_image", str(guard.check(init, "init image"))]
        if form.get("denoising") is not None:
            argv += ["--denoising_strength", str(form["denoising"])]
    return argv


def _checked_files(text: str, guard, what: str) -> str:
    """Comma-separated files or globs, each inside the allowed folders (globs expanded here)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    files = []
    for item in items:
        matches = sorted(glob.glob(str(guard.resolve(item)))) if any(c in item for c in "*?[") else [item]
        for m in matches or [item]:
            files.append(str(guard.check(m, what)))
    return ",".join(files)


def run_grid(args: list[str]) -> Path:
    """Run `lorasmith grid`; the path of the grid it wrote."""
    return grid_path_of(*run_lorasmith(args, GRID_TIMEOUT_S))


def grid_path_of(out: list[str], err: list[str]) -> Path:
    """The grid file `lorasmith grid` reported on its output."""
    grid_lines = [ln for ln in out if ln.startswith("grid: ")]
    if not grid_lines:
        raise LorasmithError("the grid command did not report a grid file", (out + err)[-12:])
    return Path(grid_lines[-1][len("grid: "):].strip())


def png_parameters(path: str | Path) -> str:
    """The A1111 `parameters` text of a PNG (empty when it has none)."""
    with Image.open(path) as img:
        return str(img.info.get("parameters", ""))


def evaluate_command(form: dict, guard) -> list[str]:
    """The `lorasmith evaluate` arguments: the form's base model and LoRA files, scored on a training folder."""
    model = (form["model"] or "").strip()
    if not model:
        raise ConfigError("Base model is required", ["'tiny' or a checkpoint file in an allowed folder"])
    if model not in builtin_model_names():
        model = str(guard.check(model, "base model"))
    if not (form.get("lora") or "").strip():
        raise ConfigError("LoRA files are required to score", ["give the run's files, e.g. out/name*.safetensors"])
    data = (form.get("score_data") or "").strip()
    if not data:
        raise ConfigError("Training images folder is required to score", ["the run's train_data_dir"])
    out = guard.check(form["output_dir"] or "grids", "grid output folder") / "evaluation"
    argv = ["evaluate", "--pretrained_model_name_or_path", model, "--lora", _checked_files(form["lora"], guard, "LoRA"),
            "--train_data_dir", str(guard.check(data, "training images folder")), "--output_dir", str(out),
            "--resolution", str(int(form["width"])), "--caption_extension", (form.get("score_caption_ext") or ".txt")]
    reg = (form.get("score_reg") or "").strip()
    if reg:
        argv += ["--reg_data_dir", str(guard.check(reg, "regularization folder"))]
    return argv


def score_summary(json_path: str | Path) -> tuple[str, str]:
    """(Markdown table + recommendation, chart path) from an evaluation.json."""
    from gui.scores_view import scores_markdown
    from library.evaluation.score_report import read_scores

    scores, rec = read_scores(json_path)
    return scores_markdown(scores, rec), str(Path(json_path).with_suffix(".png"))


def new_cells(folder: Path, since: float) -> list[str]:
    """Cell PNGs written since `since`, oldest first (the grid writes each as soon as it is made)."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.glob("*.png"):
        try:
            mtime = p.stat().st_mtime
        except OSError:
            continue
        if mtime >= since - 1:
            found.append((mtime, str(p)))
    return [p for _, p in sorted(found)]


class EvaluateTab:
    def __init__(self, ctx: GuiContext, training) -> None:
        self.ctx = ctx
        self.training = training
        self._build()
        self.run_btn.click(self.make_grid, inputs=set(self.form.values()),
                           outputs=[self.gallery, self.message, self.paths, self.grid_progress], show_progress="hidden")
        self.gallery.select(self.show_parameters, inputs=self.paths, outputs=self.parameters)
        self.fill_btn.click(self.from_last_run, outputs=[self.form["model"], self.form["lora"], self.form["output_dir"],
                                                         self.fill_msg])
        self.score_btn.click(self.score, inputs=set(self.form.values()),
                             outputs=[self.score_table, self.score_chart, self.score_progress], show_progress="hidden")

    def _build(self) -> None:
        f: dict = {}
        gr.Markdown("Compare epochs, weights, prompts and settings. Values use A1111's syntax: `1-5`, `0.5-1.5 (+0.25)`, `a, b`.")
        with gr.Row():
            f["model"] = gr.Textbox(label="Base model", value="tiny", elem_id="grid-model")
            f["lora"] = gr.Textbox(label="LoRA files (comma list or glob) as an extra axis", elem_id="grid-lora")
            f["lora_dir"] = gr.Textbox(label="LoRA folder for <lora:NAME:weight> tags in the prompt (optional)",
                                       elem_id="grid-lora-dir")
            f["output_dir"] = gr.Textbox(label="Grid output folder", value="grids", elem_id="grid-output")
            with gr.Column():
                self.fill_btn = gr.Button("Use the last training run", elem_id="grid-from-run")
                self.fill_msg = gr.Markdown(elem_id="grid-from-run-message")
        with gr.Row():
            f["prompt"] = gr.Textbox(label="Prompt", lines=2, elem_id="grid-prompt", scale=3)
            f["negative"] = gr.Textbox(label="Negative prompt", lines=2, elem_id="grid-negative", scale=2)
        with gr.Row():
            f["steps"] = gr.Number(label="Steps", value=20, precision=0, minimum=1, elem_id="grid-steps")
            f["cfg"] = gr.Number(label="CFG scale", value=7.0, minimum=0, elem_id="grid-cfg")
            f["seed"] = gr.Number(label="Seed (-1 random)", value=-1, precision=0, elem_id="grid-seed")
            f["width"] = gr.Number(label="Width", value=512, precision=0, minimum=8, step=8, elem_id="grid-width")
            f["height"] = gr.Number(label="Height", value=512, precision=0, minimum=8, step=8, elem_id="grid-height")
            f["sampler"] = gr.Textbox(label="Sampler", value="Euler a", elem_id="grid-sampler")
        with gr.Row():
            f["init_image"] = gr.Textbox(label="Init image for img2img (optional; an image file in an allowed folder)",
                                         elem_id="grid-init-image", scale=3)
            f["denoising"] = gr.Number(label="Denoising strength (img2img)", value=0.75, minimum=0.01, maximum=1,
                                       step=0.05, elem_id="grid-denoising")
        for axis, default in (("x", "LoRA weight"), ("y", NONE), ("z", NONE)):
            with gr.Row():
                f[f"{axis}_type"] = gr.Dropdown([NONE, *AXIS_TYPES], value=default, label=f"{axis.upper()} type",
                                                elem_id=f"grid-{axis}-type")
                f[f"{axis}_values"] = gr.Textbox(label=f"{axis.upper()} values", elem_id=f"grid-{axis}-values", scale=3)
        self.form = f
        self.run_btn = gr.Button("Make grid", variant="primary", elem_id="grid-run")
        self.grid_progress = gr.HTML(elem_id="grid-progress")
        self.message = gr.Markdown(elem_id="grid-message")
        self.gallery = gr.Gallery(label="Grid and cells (click to see parameters; fullscreen to zoom)", columns=4,
                                  height=520, object_fit="contain", elem_id="grid-gallery")
        self.parameters = gr.Textbox(label="Parameters of the selected image", lines=4, interactive=False,
                                     elem_id="grid-parameters")
        self.paths = gr.State([])
        with gr.Accordion("Score epochs: fidelity and drift per file and weight, and which to keep", open=False):
            with gr.Row():
                f["score_data"] = gr.Textbox(label="Training images folder (train_data_dir)", elem_id="score-data", scale=3)
                f["score_reg"] = gr.Textbox(label="Regularization folder (optional)", elem_id="score-reg", scale=2)
                f["score_caption_ext"] = gr.Textbox(label="Caption extension", value=".txt", elem_id="score-caption-ext")
            self.score_btn = gr.Button("Score the LoRA files", elem_id="score-run")
            self.score_progress = gr.HTML(elem_id="score-progress")
            self.score_table = gr.Markdown(elem_id="score-table")
            self.score_chart = gr.Image(label="Fidelity and drift against epoch", type="filepath", interactive=False,
                                        elem_id="score-chart")

    def make_grid(self, data: dict):
        """Run the grid in a child process; cells stream into the gallery as they are written, with counts and ETA."""
        form = {name: data[comp] for name, comp in self.form.items()}
        started = time.time()
        try:
            args = grid_command(form, self.ctx.guard)
        except LorasmithError as exc:
            yield {self.message: "**Error:** " + str(exc).replace("\n", "  \n"), self.grid_progress: ""}
            return
        cells_dir = Path(args[args.index("--output_dir") + 1]) / "cells"
        task = CliTask(args, GRID_TIMEOUT_S)
        yield {self.message: "", self.grid_progress: task_html(None, "ls-grid-task", task.started, "loading the model…")}
        shown: list[str] = []
        while task.running:
            time.sleep(POLL_S)
            cells = new_cells(cells_dir, started)
            update = {self.grid_progress: task_html(task.task, "ls-grid-task", task.started, "loading the model…")}
            if cells != shown:
                shown = cells
                update.update({self.gallery: cells, self.paths: cells})
            yield update
        try:
            grid_path = grid_path_of(*task.finish())
        except LorasmithError as exc:
            yield {self.message: "**Error:** " + str(exc).replace("\n", "  \n"), self.grid_progress: ""}
            return
        with Image.open(grid_path) as img:
            size = img.size
        shown = [str(grid_path)] + new_cells(grid_path.parent / "cells", started)[-64:]
        yield {self.gallery: shown, self.paths: shown, self.grid_progress: task_html(task.task, "ls-grid-task"),
               self.message: f"Grid written to `{grid_path}` ({size[0]}x{size[1]})."}

    def score(self, data: dict):
        form = {name: data[comp] for name, comp in self.form.items()}
        try:
            task = CliTask(evaluate_command(form, self.ctx.guard), GRID_TIMEOUT_S)
            while task.running:
                yield {self.score_progress: task_html(task.task, "ls-score-task", task.started, "loading the model…")}
                time.sleep(POLL_S)
            out, _err = task.finish()
            json_lines = [ln for ln in out if ln.startswith("json: ")]
            if not json_lines:
                raise LorasmithError("the evaluate command did not report its results", out[-12:])
            table, chart = score_summary(json_lines[-1][len("json: "):].strip())
        except LorasmithError as exc:
            yield {self.score_table: "**Error:** " + str(exc).replace("\n", "  \n"), self.score_progress: ""}
            return
        yield {self.score_table: table, self.score_chart: chart, self.score_progress: task_html(task.task, "ls-score-task")}

    def show_parameters(self, paths: list[str], evt: gr.SelectData) -> str:
        if not paths or evt.index is None or evt.index >= len(paths):
            return ""
        path = paths[evt.index]
        return png_parameters(path) if self.ctx.guard.allows(path) else ""

    def from_last_run(self) -> dict:
        """The latest run that has LoRA files (a run still going, or one that saved nothing, is skipped)."""
        from gui.run_view import job_files

        for job in reversed(self.ctx.jobs.jobs):
            if job.state not in ("finished", "stopped", "failed"):
                continue
            files = [f for f in job_files(job) if self.ctx.guard.allows(f)]
            if not files:
                continue
            cfg = job.config
            out = Path(cfg.output_dir or ".")
            return {self.form["model"]: cfg.pretrained_model_name_or_path or "",
                    self.form["lora"]: ",".join(files), self.form["output_dir"]: str(out / "grids"),
                    self.fill_msg: f"Using job #{job.id} **{job.name}** ({job.state}): {len(files)} LoRA file(s)."}
        return {self.fill_msg: "No ended training run with LoRA files yet (a run that is still going is not used)."}
