"""The Training tab: presets, the generated form, checks, plan, command, start/stop, live progress.

Handlers receive the form as a set of components (Gradio passes a dict
component → value) and turn it into field name → value at once; outputs are
returned as dicts too.  No handler has positional form arguments.
"""
from __future__ import annotations

import html
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from gui import run_view
from gui.checks import PLAN_FIELDS, field_info, form_issues, issues_markdown, plan_text
from gui.context import GuiContext
from gui.form import build_widgets, config_to_values, help_text, values_to_config
from library.config import TrainConfig
from library.config_io import command_string, config_to_toml
from library.config_resolve import load_config_source
from library.errors import LorasmithError
from library.presets import delete_user_preset, list_presets, load_preset, rename_user_preset, save_user_preset


def preset_choices() -> list[tuple[str, str]]:
    return [(f"{p['name']} ({p['source']})", p["name"]) for p in list_presets()]


def _edit_triggers(components) -> list:
    """The events of a user's edit: input, plus blur where the component has it."""
    triggers = []
    for comp in components:
        triggers.append(comp.input)
        if hasattr(comp, "blur"):
            triggers.append(comp.blur)
    return triggers


def _error_text(exc: LorasmithError) -> str:
    return "**Error:** " + html.escape(str(exc)).replace("\n", "  \n")


class TrainingTab:
    """Builds the tab's components and wires them; `widgets` maps field name → component."""

    def __init__(self, ctx: GuiContext) -> None:
        self.ctx = ctx
        self._build()
        self._wire_presets()
        self._wire_checks()
        self._wire_run()

    # --- layout --------------------------------------------------------------------
    def _build(self) -> None:
        with gr.Row():
            self.preset = gr.Dropdown(choices=preset_choices(), label="Preset", elem_id="preset-select", scale=3)
            self.load_btn = gr.Button("Load preset", elem_id="preset-load")
            self.delete_btn = gr.Button("Delete user preset", elem_id="preset-delete")
        with gr.Row():
            self.preset_name = gr.Textbox(label="User preset name", elem_id="preset-name", scale=3)
            self.overwrite = gr.Checkbox(label="Overwrite", elem_id="preset-overwrite")
            self.save_btn = gr.Button("Save as user preset", elem_id="preset-save")
            self.rename_btn = gr.Button("Rename selected to this name", elem_id="preset-rename")
        with gr.Accordion("Import / export", open=False), gr.Row():
            self.kohya_file = gr.File(label="Import a kohya_ss GUI JSON, a TOML or a preset JSON", file_types=[".json", ".toml"],
                                      type="filepath", elem_id="import-kohya")
            with gr.Column():
                self.export_btn = gr.Button("Export TOML", elem_id="export-toml")
                self.export_file = gr.File(label="Exported TOML", interactive=False, elem_id="export-file")
        self.preset_msg = gr.Markdown(elem_id="preset-message")
        with gr.Row():
            with gr.Column(scale=3):
                self.widgets = build_widgets(TrainConfig())
            with gr.Column(scale=2):
                self._build_side()
        self.shown = gr.State({})
        self.seen = gr.State({})
        self.timer = gr.Timer(1.0)

    def _build_side(self) -> None:
        with gr.Row():
            self.start_btn = gr.Button("Start (queues if busy)", variant="primary", elem_id="start")
            self.stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
        with gr.Row():
            self.command_btn = gr.Button("Print command", elem_id="print-command")
            self.tb_btn = gr.Button("Start TensorBoard", elem_id="start-tensorboard")
        self.run_msg = gr.Markdown(elem_id="run-message")
        self.progress = gr.HTML(run_view.progress_html(None), elem_id="progress")
        self.loss_plot = gr.LinePlot(pd.DataFrame({"step": [], "loss": []}), x="step", y="loss",
                                     label="Loss", height=220, elem_id="loss-chart")
        self.samples = gr.Gallery(label="Latest samples", columns=4, height=260, elem_id="samples")
        self.log = gr.Textbox(label="Log (tail)", lines=8, max_lines=8, interactive=False, elem_id="log-tail")
        self.queue = gr.Markdown(elem_id="queue")
        with gr.Row():
            self.cancel_id = gr.Number(label="Queued job #", value=None, precision=0, elem_id="cancel-id")
            self.cancel_btn = gr.Button("Remove from queue", elem_id="cancel-queued")
        self.tb_link = gr.Markdown(elem_id="tensorboard-link")
        self.issues = gr.Markdown(elem_id="issues")
        self.plan = gr.Textbox(label="Training plan", lines=14, interactive=False, elem_id="plan")
        self.command = gr.Code(label="Equivalent command", language="shell", elem_id="command")
        self.toml = gr.Code(label="TOML", elem_id="toml")

    # --- helpers ----------------------------------------------------------------------
    def named(self, data: dict) -> dict[str, Any]:
        return {name: data[comp] for name, comp in self.widgets.items() if comp in data}

    def _form_updates(self, cfg: TrainConfig) -> dict:
        return {self.widgets[n]: v for n, v in config_to_values(cfg).items()}

    @property
    def form_inputs(self) -> set:
        return set(self.widgets.values())

    # --- presets -------------------------------------------------------------------------
    def _wire_presets(self) -> None:
        outputs = [*self.widgets.values(), self.preset_msg]
        self._recheck_after(self.load_btn.click(self.load_preset, inputs=self.preset, outputs=outputs))
        self.save_btn.click(self.save_preset, inputs=self.form_inputs | {self.preset_name, self.overwrite},
                            outputs=[self.preset_msg, self.preset])
        self.delete_btn.click(self.delete_preset, inputs=self.preset, outputs=[self.preset_msg, self.preset])
        self.rename_btn.click(self.rename_preset, inputs=[self.preset, self.preset_name],
                              outputs=[self.preset_msg, self.preset])
        self._recheck_after(self.kohya_file.upload(self.import_kohya, inputs=self.kohya_file, outputs=outputs))
        self.export_btn.click(self.export_toml, inputs=self.form_inputs, outputs=[self.export_file, self.preset_msg])

    def refresh_presets(self) -> dict:
        return gr.update(choices=preset_choices())

    def load_preset(self, name: str | None) -> dict:
        if not name:
            return {self.preset_msg: "Choose a preset first."}
        try:
            cfg = load_preset(name)
        except LorasmithError as exc:
            return {self.preset_msg: _error_text(exc)}
        return {**self._form_updates(cfg), self.preset_msg: f"Loaded preset **{name}**."}

    def save_preset(self, data: dict) -> dict:
        name = (data[self.preset_name] or "").strip()
        try:
            cfg = values_to_config(self.named(data))
            path = save_user_preset(cfg, name, overwrite=bool(data[self.overwrite]))
        except LorasmithError as exc:
            return {self.preset_msg: _error_text(exc)}
        return {self.preset_msg: f"Saved user preset **{name}** ({path.name}).",
                self.preset: gr.update(choices=preset_choices(), value=name)}

    def delete_preset(self, name: str | None) -> dict:
        try:
            delete_user_preset(name or "")
        except LorasmithError as exc:
            return {self.preset_msg: _error_text(exc)}
        return {self.preset_msg: f"Deleted user preset **{name}**.", self.preset: gr.update(choices=preset_choices(), value=None)}

    def rename_preset(self, old: str | None, new: str) -> dict:
        try:
            rename_user_preset(old or "", (new or "").strip())
        except LorasmithError as exc:
            return {self.preset_msg: _error_text(exc)}
        return {self.preset_msg: f"Renamed **{old}** to **{new.strip()}**.",
                self.preset: gr.update(choices=preset_choices(), value=new.strip())}

    def import_kohya(self, path: str | None) -> dict:
        """A kohya_ss GUI JSON (or a TOML / preset JSON) onto the defaults; the summary says what to check."""
        if not path:
            return {self.preset_msg: ""}
        try:
            cfg, summary = self._import_config(Path(path))
        except LorasmithError as exc:
            return {self.preset_msg: _error_text(exc)}
        text = html.escape(summary).replace("\n", "  \n")
        return {**self._form_updates(cfg), self.preset_msg: f"Imported **{Path(path).name}**.  \n{text}"}

    def _import_config(self, path: Path) -> tuple[TrainConfig, str]:
        import json

        from library.config_io import is_kohya_gui_config
        from library.kohya_import import import_kohya_config

        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path.suffix.lower() == ".json" else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LorasmithError(f"{path.name} is not valid JSON: {exc}") from None
        if not (isinstance(data, dict) and is_kohya_gui_config(data)):
            return load_config_source(path), "Check the paths before starting."
        result = import_kohya_config(data, source=path.name)
        if result.sample_prompts_text:
            # kohya_ss keeps prompts inline; they go to a file in the first allowed folder.
            result.materialize_sample_prompts(self.ctx.guard.roots[0] / "lorasmith-imports" / path.stem)
        return result.config, result.summary()

    def export_toml(self, data: dict) -> dict:
        try:
            cfg = values_to_config(self.named(data))
        except LorasmithError as exc:
            return {self.preset_msg: _error_text(exc), self.export_file: None}
        folder = Path(tempfile.mkdtemp(prefix="lorasmith-export-"))
        path = folder / f"{cfg.output_name or 'config'}.toml"
        path.write_text(config_to_toml(cfg), encoding="utf-8")
        return {self.export_file: str(path), self.preset_msg: f"Exported {path.name}."}

    # --- checks, plan, command -----------------------------------------------------------------
    def _wire_checks(self) -> None:
        # `.input` fires on the user's edits only; a preset load re-checks once through `_recheck_after`.
        # `.blur` catches pasted text, which some browsers deliver without an input event.
        gr.on(_edit_triggers(self.widgets.values()), self.check_form, **self._check_args)
        gr.on(_edit_triggers(self.widgets[n] for n in PLAN_FIELDS if n in self.widgets), self.update_plan, **self._plan_args)
        self.command_btn.click(self.print_command, inputs=self.form_inputs, outputs=[self.command, self.toml, self.issues])
        self.widgets["network_module"].change(self.network_args_help, inputs=self.widgets["network_module"],
                                              outputs=self.widgets["network_args"], show_progress="hidden")

    def network_args_help(self, module: str | None) -> dict:
        """network_args shows only the options of the chosen network_module (sd-scripts' or LyCORIS')."""
        from library.lora.network_args import describe

        info, example = describe(module)
        return gr.update(info=info, placeholder=example)

    @property
    def _check_args(self) -> dict:
        return {"inputs": self.form_inputs | {self.shown}, "outputs": [*self.widgets.values(), self.issues, self.shown],
                "trigger_mode": "always_last", "show_progress": "hidden"}

    @property
    def _plan_args(self) -> dict:
        return {"inputs": self.form_inputs, "outputs": self.plan, "trigger_mode": "always_last", "show_progress": "hidden"}

    def _recheck_after(self, event) -> None:
        event.then(self.check_form, **self._check_args).then(self.update_plan, **self._plan_args)

    def check_form(self, data: dict) -> dict:
        """Panel text plus `info` updates only for fields whose message changed."""
        _cfg, errors, warnings = form_issues(self.named(data), self.ctx.guard, for_training=True)
        before: dict = data[self.shown] or {}
        now = {n: field_info(n, errors.get(n), warnings.get(n)) for n in {*errors, *warnings} if n in self.widgets}
        out: dict = {self.issues: issues_markdown(errors, warnings), self.shown: now}
        for name in {*before, *now}:
            if before.get(name) != now.get(name):
                out[self.widgets[name]] = gr.update(info=now.get(name, help_text(name)))
        return out

    def update_plan(self, data: dict) -> str:
        cfg, _errors, _warnings = form_issues(self.named(data), self.ctx.guard, for_training=False)
        return plan_text(cfg, self.ctx.guard)

    def print_command(self, data: dict) -> dict:
        try:
            cfg = values_to_config(self.named(data))
        except LorasmithError as exc:
            return {self.issues: _error_text(exc)}
        return {self.command: command_string(cfg), self.toml: config_to_toml(cfg)}

    # --- run ----------------------------------------------------------------------------------
    def _wire_run(self) -> None:
        live = self.live_outputs
        self.start_btn.click(self.start, inputs=self.form_inputs, outputs=[self.run_msg, self.issues, *live])
        self.stop_btn.click(self.stop, outputs=self.run_msg)
        self.cancel_btn.click(self.cancel, inputs=self.cancel_id, outputs=self.run_msg)
        self.tb_btn.click(self.start_tensorboard, inputs=self.form_inputs, outputs=self.tb_link)
        self.timer.tick(self.refresh, inputs=self.seen, outputs=live, show_progress="hidden")

    def start(self, data: dict) -> dict:
        cfg, errors, warnings = form_issues(self.named(data), self.ctx.guard, for_training=True)
        if errors or cfg is None:
            return {self.run_msg: f"Not started: {len(errors)} problem(s), listed below.",
                    self.issues: issues_markdown(errors, warnings)}
        job = self.ctx.jobs.submit(self.ctx.guard.absolutize(cfg))
        where = "started" if job.state != "queued" else f"queued behind {len(self.ctx.jobs.queued()) - 1} job(s)"
        return {self.run_msg: f"Job #{job.id} **{job.name}** {where}.", **self.refresh()}

    @property
    def live_outputs(self) -> list:
        return [self.progress, self.loss_plot, self.samples, self.log, self.queue, self.seen]

    def stop(self) -> str:
        return self.ctx.jobs.stop()

    def cancel(self, job_id: float | None) -> str:
        if job_id is None:
            return "Enter the number of a queued job."
        if self.ctx.jobs.cancel(int(job_id)):
            return f"Job #{int(job_id)} removed from the queue."
        return f"Job #{int(job_id)} is not waiting in the queue (running or finished jobs are stopped with Stop)."

    def refresh(self, seen: dict | None = None) -> dict:
        """Live panels; a panel whose content did not change is skipped (no re-render every second)."""
        job = self.ctx.jobs.current()
        rows = run_view.loss_rows(job)
        fresh = {
            self.progress: (run_view.progress_html(job), None),
            self.loss_plot: ((job.id if job else None, len(rows), rows[-1] if rows else None),
                             lambda: pd.DataFrame(rows, columns=["step", "loss"])),
            self.samples: (tuple(run_view.sample_images(job, self.ctx.guard)), None),
            self.log: (job.log_tail() if job else "", None),
            self.queue: (run_view.queue_markdown(self.ctx.jobs), None),
        }
        seen = dict(seen or {})
        out: dict = {}
        for comp, (key, make) in fresh.items():
            name = comp.elem_id
            if seen.get(name) == repr(key):
                out[comp] = gr.skip()
                continue
            seen[name] = repr(key)
            value = make() if make else key
            out[comp] = list(value) if isinstance(value, tuple) and comp is self.samples else value
        out[self.seen] = seen
        return out

    def start_tensorboard(self, data: dict) -> str:
        logdir = self.named(data).get("logging_dir")
        job = self.ctx.jobs.current()
        if not logdir and job is not None:
            logdir = job.config.logging_dir
        if not logdir:
            return "Set logging_dir first: TensorBoard shows the logs written there."
        try:
            path = self.ctx.guard.check(logdir, "logging_dir")
        except LorasmithError as exc:
            return _error_text(exc)
        url = self.ctx.tensorboard.start(path)
        return f"TensorBoard for `{path}`: [{url}]({url}) (stops with the GUI)"
