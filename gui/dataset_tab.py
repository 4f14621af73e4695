"""The Dataset tab: prepare folders, crop, captions and the dataset report, with previews.

Every function here calls `dataset_tools`; this module only turns form values
into their arguments (paths checked against the allowed folders) and their
results into text and image previews.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from gui.context import GuiContext
from gui.form import values_to_config
from library.errors import LorasmithError

MAX_PREVIEWS = 48


def _error(exc: LorasmithError) -> str:
    return "**Error:** " + str(exc).replace("\n", "  \n")


def run_summary(title: str, run) -> str:
    lines = run.summary_lines() if hasattr(run, "summary_lines") else []
    return f"**{title}**  \n" + "  \n".join(lines[:30])


def previews(paths: list[Path], guard) -> list[tuple[str, str]]:
    return [(str(p), p.name) for p in paths if guard.allows(p)][:MAX_PREVIEWS]


class DatasetTab:
    def __init__(self, ctx: GuiContext, training) -> None:
        self.ctx = ctx
        self.training = training
        self.guard = ctx.guard
        # Created first so every button can name them as outputs; shown below the tools.
        self.message = gr.Markdown(elem_id="dataset-message", render=False)
        self.gallery = gr.Gallery(label="Preview", columns=6, height=360, object_fit="contain",
                                  elem_id="dataset-previews", render=False)
        with gr.Accordion("Dataset report (what the trainer will see)", open=True):
            self._build_report()
        with gr.Accordion("Prepare training folders (<repeats>_<instance> <class>)", open=False):
            self._build_prepare()
        with gr.Accordion("Crop", open=False, elem_id="crop-box"):
            self._build_crop()
        with gr.Accordion("Captions", open=False):
            self._build_captions()
        with gr.Accordion("Tag with a WD14 tagger (ONNX model folder)", open=False):
            self._build_tagger()
        self.message.render()
        self.gallery.render()

    # --- report ---------------------------------------------------------------------------
    def _build_report(self) -> None:
        gr.Markdown("Uses the Training tab's folders, resolution, buckets, batch size, epochs, optimizer and target_steps. "
                    "The check also reads every training image: faces, sharpness, size, aspect, near-duplicates.")
        with gr.Row():
            self.report_btn = gr.Button("Build report from the training form", elem_id="dataset-report-run")
            self.check_btn = gr.Button("Check images (faces, blur, duplicates, token, steps)", elem_id="dataset-check-run")
        self.report = gr.Textbox(label="Report", lines=16, interactive=False, elem_id="dataset-report")
        inputs = self.training.form_inputs
        self.report_btn.click(self.build_report, inputs=inputs, outputs=[self.report, self.gallery, self.message])
        self.check_btn.click(self.check_images, inputs=inputs, outputs=[self.report, self.gallery, self.message])

    def build_report(self, data: dict) -> dict:
        from dataset_tools.report import build_report, format_report

        report = self._on_form_folders(data, build_report)
        if isinstance(report, dict):
            return report
        paths = [Path(f.path) / r.file for f in report.folders for r in report.images if r.folder == f.folder]
        return {self.report: format_report(report), self.gallery: previews(paths, self.guard),
                self.message: f"{len(report.images)} images in {len(report.folders)} folder(s)."}

    def check_images(self, data: dict) -> dict:
        """`lorasmith dataset check` on the form's folders: findings first in the message, the full check below."""
        from dataset_tools.check import check_dataset, format_check

        check = self._on_form_folders(data, check_dataset)
        if isinstance(check, dict):
            return check
        folders = {f.folder: Path(f.path) for f in check.report.folders}
        flagged = [folders[f.file.split("/")[0]] / f.file.split("/", 1)[1] for f in check.findings
                   if f.file and "/" in f.file and f.file.split("/")[0] in folders]
        lines = [f"- {f.line()}" for f in check.findings[:20]]
        more = [f"- … and {len(check.findings) - 20} more (see the report)"] if len(check.findings) > 20 else []
        head = f"**{len(check.findings)} finding(s)**" if check.findings else "**No findings.**"
        return {self.report: format_check(check), self.gallery: previews(list(dict.fromkeys(flagged)), self.guard),
                self.message: "  \n".join([head, *lines, *more])}

    def _on_form_folders(self, data: dict, tool):
        """tool(train_data_dir, config) on the form's checked paths, or the message dict to show instead."""
        try:
            cfg = values_to_config(self.training.named(data))
            if not cfg.train_data_dir:
                return {self.message: "Set train_data_dir in the Training tab first."}
            folder = self.guard.check(cfg.train_data_dir, "train_data_dir")
            cfg = self.guard.absolutize(cfg)
            for name in ("reg_data_dir", "dataset_config"):
                if getattr(cfg, name):
                    self.guard.check(getattr(cfg, name), name)
            return tool(folder, cfg)
        except LorasmithError as exc:
            return {self.message: _error(exc)}

    # --- prepare ----------------------------------------------------------------------------
    def _build_prepare(self) -> None:
        with gr.Row():
            self.instance = gr.Textbox(label="Instance token (e.g. ohwx)", elem_id="prep-instance")
            self.klass = gr.Textbox(label="Class (e.g. man)", elem_id="prep-class")
            self.repeats = gr.Number(label="Training repeats", value=40, precision=0, minimum=1, elem_id="prep-repeats")
        with gr.Row():
            self.src = gr.Textbox(label="Training images folder", elem_id="prep-src")
            self.reg_src = gr.Textbox(label="Regularization images folder (optional)", elem_id="prep-reg")
            self.reg_repeats = gr.Number(label="Reg repeats", value=1, precision=0, minimum=1, elem_id="prep-reg-repeats")
            self.dest = gr.Textbox(label="Destination (img/ reg/ log/ model/ go here)", elem_id="prep-dest")
        self.prep_btn = gr.Button("Prepare folders and fill the training form", elem_id="prep-run")
        fields = self.training.widgets
        self.prep_btn.click(self.prepare, inputs=[self.instance, self.klass, self.repeats, self.src, self.reg_src,
                                                  self.reg_repeats, self.dest],
                            outputs=[*(fields[n] for n in ("train_data_dir", "reg_data_dir", "logging_dir", "output_dir")),
                                     self.message, self.gallery])

    def prepare(self, instance, klass, repeats, src, reg_src, reg_repeats, dest) -> dict:
        from dataset_tools.prepare import prepare_training_folders

        try:
            src_p = self.guard.check(src, "training images folder")
            reg_p = self.guard.check(reg_src, "regularization folder") if reg_src else None
            dest_p = self.guard.check(dest, "destination")
            result = prepare_training_folders(instance or "", klass or "", src_p, dest_p, int(repeats or 1),
                                              reg_p, int(reg_repeats or 1), progress=False)
        except LorasmithError as exc:
            return {self.message: _error(exc)}
        w = self.training.widgets
        out = {w["train_data_dir"]: str(result.img_dir.parent), w["logging_dir"]: str(result.log_dir),
               w["output_dir"]: str(result.model_dir),
               self.message: run_summary(f"Prepared {result.img_dir}", result.runs["img"]),
               self.gallery: previews(sorted(result.img_dir.iterdir()), self.guard)}
        if result.reg_dir is not None:
            out[w["reg_data_dir"]] = str(result.reg_dir.parent)
        return out

    # --- crop ---------------------------------------------------------------------------------
    def _build_crop(self) -> None:
        with gr.Row():
            self.crop_src = gr.Textbox(label="Source folder", elem_id="crop-src")
            self.crop_dst = gr.Textbox(label="Destination folder", elem_id="crop-dst")
            self.crop_ratio = gr.Textbox(label="Ratio", value="1:1", elem_id="crop-ratio")
            self.crop_size = gr.Number(label="Short side after crop (empty: keep)", precision=0, elem_id="crop-size")
            self.crop_face = gr.Checkbox(label="Centre on the largest face", elem_id="crop-face")
        self.crop_btn = gr.Button("Crop", elem_id="crop-run")
        self.crop_progress = gr.HTML(elem_id="crop-progress")
        self.crop_btn.click(self.crop, inputs=[self.crop_src, self.crop_dst, self.crop_ratio, self.crop_size,
                                               self.crop_face], outputs=[self.message, self.gallery, self.crop_progress],
                            show_progress="hidden")

    def crop(self, src, dst, ratio, size, face):
        """Crop in a worker thread; the page shows 'crop 12/40 · ETA' while it runs."""
        import time

        from dataset_tools.crop import CropOptions, crop_folder, parse_ratio
        from gui.cli_runner import ThreadTask, task_html

        try:
            options = CropOptions(ratio=parse_ratio(ratio or "1:1"), face=bool(face), size=int(size) if size else None)
            task = ThreadTask("crop", crop_folder, self.guard.check(src, "source folder"),
                              self.guard.check(dst, "destination folder"), options)
            while task.running:
                yield {self.crop_progress: task_html(task.task, "ls-crop-task", task.started)}
                time.sleep(0.3)
            run = task.result()
        except LorasmithError as exc:
            yield {self.message: _error(exc), self.crop_progress: ""}
            return
        yield {self.message: run_summary("Cropped", run), self.gallery: previews(run.written, self.guard),
               self.crop_progress: task_html(task.task, "ls-crop-task")}

    # --- captions -------------------------------------------------------------------------------
    def _build_captions(self) -> None:
        with gr.Row():
            self.cap_src = gr.Textbox(label="Image folder", elem_id="cap-src")
            self.cap_text = gr.Textbox(label="Caption text (empty: words from the file name)", elem_id="cap-text")
            self.cap_ext = gr.Textbox(label="Caption extension", value=".txt", elem_id="cap-ext")
            self.cap_overwrite = gr.Checkbox(label="Overwrite existing captions", elem_id="cap-overwrite")
        self.cap_btn = gr.Button("Write captions beside the images", elem_id="cap-run")
        self.cap_btn.click(self.captions, inputs=[self.cap_src, self.cap_text, self.cap_ext, self.cap_overwrite],
                           outputs=self.message)

    def captions(self, src, text, ext, overwrite) -> dict:
        from dataset_tools.captions import create_captions

        try:
            folder = self.guard.check(src, "image folder")
            run = create_captions(folder, folder, text=text or None, from_filename=not text,
                                  caption_extension=ext or ".txt", in_place=True, overwrite=bool(overwrite),
                                  captions_only=True, progress=False)
        except LorasmithError as exc:
            return {self.message: _error(exc)}
        return {self.message: run_summary("Captions", run)}

    # --- WD14 tagger --------------------------------------------------------------------------
    def _build_tagger(self) -> None:
        gr.Markdown("A folder holding `model.onnx` and `selected_tags.csv` (SmilingWolf's WD14 taggers); "
                    "needs onnxruntime (`pip install 'lorasmith[caption]'`). Images with a caption keep it "
                    "unless you tick Overwrite.")
        with gr.Row():
            self.tag_src = gr.Textbox(label="Image folder", elem_id="tag-src")
            self.tag_model = gr.Textbox(label="Tagger model folder", elem_id="tag-model")
            self.tag_trigger = gr.Textbox(label="Trigger words put first (e.g. ohwx woman)", elem_id="tag-trigger")
        with gr.Row():
            self.tag_thresh = gr.Slider(0, 1, value=0.35, step=0.01, label="Threshold", elem_id="tag-thresh")
            self.tag_char = gr.Slider(0, 1, value=0.85, step=0.01, label="Character threshold", elem_id="tag-char")
            self.tag_undesired = gr.Textbox(label="Tags never written (comma-separated)", elem_id="tag-undesired")
            self.tag_ext = gr.Textbox(label="Caption extension", value=".txt", elem_id="tag-ext")
            self.tag_overwrite = gr.Checkbox(label="Overwrite existing captions", elem_id="tag-overwrite")
        self.tag_btn = gr.Button("Tag the images", elem_id="tag-run")
        self.tag_btn.click(self.tag, inputs=[self.tag_src, self.tag_model, self.tag_thresh, self.tag_char,
                                             self.tag_trigger, self.tag_undesired, self.tag_ext, self.tag_overwrite],
                           outputs=self.message)

    def tag(self, src, model, thresh, char_thresh, trigger, undesired, ext, overwrite) -> dict:
        from dataset_tools.captions import split_tags
        from dataset_tools.tagger import TagOptions, tag_folder

        try:
            folder = self.guard.check(src, "image folder")
            options = TagOptions(general_threshold=float(thresh), character_threshold=float(char_thresh),
                                 undesired=split_tags(undesired or ""))
            run = tag_folder(folder, folder, self.guard.check(model, "tagger model folder"), options,
                             prefix=trigger or "", caption_extension=ext or ".txt", in_place=True,
                             overwrite=bool(overwrite), captions_only=True, progress=False)
        except LorasmithError as exc:
            return {self.message: _error(exc)}
        return {self.message: run_summary("Tagged", run)}
