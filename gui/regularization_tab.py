"""The Regularization tab: class images from real photos or generated with the base model, and a balance check.

Each button runs the `lorasmith reg …` command (regularization/ does the work)
in a child process; training options (folders, resolution, seed, base model)
come from the Training tab's form, so they mean what they mean to the trainer.
"""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from gui.cli_runner import CliTask, run_lorasmith, task_html
from gui.context import GuiContext
from gui.form import values_to_config
from gui.safety import builtin_model_names
from library.config import TrainConfig
from library.errors import ConfigError, LorasmithError

MAX_PREVIEWS = 48
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def photos_args(form: dict, cfg: TrainConfig, guard) -> list[str]:
    """`reg photos` arguments; the count defaults to images × repeats of the training folder."""
    args = ["reg", "photos", str(guard.check(form["src"], "class photos folder")),
            str(guard.check(form["dest"], "reg folder")), "--class_prompt", _required(form["class_prompt"]),
            "--repeats", str(int(form["repeats"] or 1)), "--resolution", cfg.resolution]
    if form["count"]:
        args += ["--count", str(int(form["count"]))]
    elif cfg.train_data_dir:
        args += ["--train_data_dir", str(guard.check(cfg.train_data_dir, "train_data_dir"))]
    if cfg.seed is not None:
        args += ["--seed", str(cfg.seed)]
    if form["face"]:
        args.append("--face")
    return args


def generate_args(form: dict, cfg: TrainConfig, guard) -> list[str]:
    """`reg generate` arguments with the training form's base model and resolution."""
    model = cfg.pretrained_model_name_or_path
    if not model:
        raise ConfigError("pretrained_model_name_or_path is empty in the Training tab", ["set the base model there first"])
    if model not in builtin_model_names():
        model = str(guard.check(model, "pretrained_model_name_or_path"))
    if not form["count"]:
        raise ConfigError("Count is required to generate a set", ["at least images × repeats of the training set"])
    args = ["reg", "generate", str(guard.check(form["dest"], "reg folder")), "--class_prompt",
            _required(form["class_prompt"]), "--count", str(int(form["count"])), "--repeats", str(int(form["repeats"] or 1)),
            "--steps", str(int(form["steps"] or 30)), "--cfg_scale", str(form["cfg"] or 7.0),
            "--seed", str(int(form["seed"] or 0)), "--pretrained_model_name_or_path", model,
            "--resolution", cfg.resolution]
    if form["prompt"]:
        args += ["--prompt", form["prompt"]]
    if cfg.clip_skip:
        args += ["--clip_skip", str(cfg.clip_skip)]
    return args


def _required(text: str | None) -> str:
    if not text or not text.strip():
        raise ConfigError("Class prompt is required", ["e.g. 'woman' (it names the <repeats>_<class> folder)"])
    return text.strip()


def folder_images(folder: Path, guard) -> list[tuple[str, str]]:
    if not folder.is_dir() or not guard.allows(folder):
        return []
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(str(p), p.name) for p in found[:MAX_PREVIEWS]]


class RegularizationTab:
    def __init__(self, ctx: GuiContext, training) -> None:
        self.ctx = ctx
        self.training = training
        self.message = gr.Markdown(elem_id="reg-message", render=False)
        self.gallery = gr.Gallery(label="Regularization images", columns=6, height=320, object_fit="contain",
                                  elem_id="reg-previews", render=False)
        gr.Markdown("Base model, resolution, seed and train_data_dir come from the Training tab.")
        f: dict = {}
        with gr.Row():
            f["class_prompt"] = gr.Textbox(label="Class (e.g. woman)", elem_id="reg-class")
            f["dest"] = gr.Textbox(label="Reg folder (becomes reg_data_dir)", elem_id="reg-dest")
            f["count"] = gr.Number(label="Count (starts at images × repeats of train_data_dir)", value=None, precision=0,
                                   elem_id="reg-count")
            f["repeats"] = gr.Number(label="Repeats", value=1, precision=0, minimum=1, elem_id="reg-repeats")
        with gr.Accordion("From real photos", open=True), gr.Row():
            f["src"] = gr.Textbox(label="Class photos folder", elem_id="reg-src")
            f["face"] = gr.Checkbox(label="Crop around the largest face", elem_id="reg-face")
            self.photos_btn = gr.Button("Build from photos", elem_id="reg-photos")
        with gr.Accordion("Generated with the base model", open=False), gr.Row():
            f["prompt"] = gr.Textbox(label="Prompt (default: the class)", elem_id="reg-prompt")
            f["steps"] = gr.Number(label="Steps", value=30, precision=0, minimum=1, elem_id="reg-steps")
            f["cfg"] = gr.Number(label="CFG scale", value=7.0, minimum=0, elem_id="reg-cfg")
            f["seed"] = gr.Number(label="First seed", value=0, precision=0, minimum=0, elem_id="reg-seed")
            self.generate_btn = gr.Button("Generate", elem_id="reg-generate")
        self.form = f
        self.check_btn = gr.Button("Check balance against train_data_dir", elem_id="reg-check")
        self.progress = gr.HTML(elem_id="reg-progress")
        self.message.render()
        self.gallery.render()
        inputs = set(f.values()) | self.training.form_inputs
        outputs = [self.message, self.gallery, self.training.widgets["reg_data_dir"]]
        build_outputs = [*outputs, self.progress]
        self.photos_btn.click(self.build_photos, inputs=inputs, outputs=build_outputs, show_progress="hidden")
        self.generate_btn.click(self.build_generated, inputs=inputs, outputs=build_outputs, show_progress="hidden")
        self.check_btn.click(self.check, inputs=inputs, outputs=outputs)
        self.tab_select = lambda tab: tab.select(self.suggest_count, inputs=inputs, outputs=f["count"])

    def suggest_count(self, data: dict) -> dict:
        """Count = images × repeats of the training folders (what balancing needs), unless the user set one."""
        form, count = {name: data[comp] for name, comp in self.form.items()}, None
        if form["count"]:
            return gr.skip()
        try:
            cfg = values_to_config(self.training.named(data))
            if cfg.train_data_dir and self.ctx.guard.allows(cfg.train_data_dir):
                from library.data.prepare import prepare_data

                count = prepare_data(self.ctx.guard.absolutize(cfg)).plan.train_items
        except Exception:  # no plan yet (no folder, bad form): leave the field for the user
            return gr.skip()
        return count if count else gr.skip()

    def _read(self, data: dict) -> tuple[dict, TrainConfig]:
        form = {name: data[comp] for name, comp in self.form.items()}
        return form, values_to_config(self.training.named(data))

    def build_photos(self, data: dict):
        yield from self.build(data, photos_args)

    def build_generated(self, data: dict):
        yield from self.build(data, generate_args)

    def build(self, data: dict, make_args):
        """Run `lorasmith reg …` in a child process, showing its count and ETA; previews and reg_data_dir at the end."""
        try:
            form, cfg = self._read(data)
            for key, label in (("class_prompt", "Class"), ("dest", "Reg folder")):
                if not (form[key] or "").strip():
                    raise ConfigError(f"{label} is empty", [f"fill in {label} above"])
            if make_args is photos_args and not (form["src"] or "").strip():
                raise ConfigError("Class photos folder is empty", ["give the folder with photos of the class"])
            if form["count"] is not None and form["count"] < 1:
                raise ConfigError(f"Count {form['count']} is below 1", ["give how many images to build, e.g. images × repeats"])
            task = CliTask(make_args(form, cfg, self.ctx.guard))
            yield {self.message: "", self.progress: task_html(None, "ls-reg-task", task.started)}
            while task.running:
                time.sleep(0.5)
                yield {self.progress: task_html(task.task, "ls-reg-task", task.started)}
            lines, _progress = task.finish()
        except LorasmithError as exc:
            yield {self.message: "**Build failed:** " + str(exc).replace("\n", "  \n"), self.progress: ""}
            return
        except (TypeError, ValueError, OSError) as exc:  # a value the checks above did not foresee: say which
            yield {self.message: f"**Build failed:** {type(exc).__name__}: {exc}", self.progress: ""}
            return
        dest = self.ctx.guard.resolve(form["dest"])
        yield {self.message: "  \n".join(lines[-15:]), self.gallery: folder_images(dest, self.ctx.guard),
               self.training.widgets["reg_data_dir"]: str(dest), self.progress: task_html(task.task, "ls-reg-task")}

    def check(self, data: dict) -> dict:
        try:
            form, cfg = self._read(data)
            if not cfg.train_data_dir:
                raise ConfigError("train_data_dir is empty in the Training tab")
            args = ["reg", "check", str(self.ctx.guard.check(cfg.train_data_dir, "train_data_dir")),
                    str(self.ctx.guard.check(form["dest"], "reg folder")), "--caption_extension", cfg.caption_extension]
            lines, _progress = run_lorasmith(args)
        except LorasmithError as exc:
            # `reg check` exits 1 when unbalanced: its report is the useful part.
            return {self.message: "  \n".join(exc.problems or [str(exc)])}
        return {self.message: "  \n".join(lines)}
