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
from gui.checks import PLAN_FIELDS, form_issues, issues_html, picked_model, plan_html, summary_html
from gui.context import GuiContext
from gui.form import MODEL_FIELD, build_widgets, config_to_values, values_to_config
from gui.model_info import field_visibility, info_html
from gui.model_picker import ModelFolder
from gui.lora_types import LORA_TYPES
from gui.lora_types import hint as lora_hint
from gui.lora_types import switch_type as switch_lora
from gui.lora_types import type_of as lora_type_of
from gui.preset_flow import apply_preset, differs
from library.config import TrainConfig, family_options
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
        """Form on the left in collapsible sections, the run panel on the right (sticky: always in view)."""
        with gr.Row(elem_id="ls-main", equal_height=False):
            with gr.Column(scale=3, elem_id="ls-form"):
                self._build_presets()
                self.widgets = build_widgets(TrainConfig(), extra={"Network": self._build_lora_type},
                                             after={"Source model": self._build_model_picker})
            with gr.Column(scale=2, elem_id="ls-run-panel", min_width=420):
                self._build_side()
        self.shown = gr.State({})
        self.seen = gr.State({})
        self.undo_values = gr.State(None)
        self.applied = gr.State(None)  # {"name": preset, "values": what it put in the form}
        self.plan_key = gr.State("")
        self.family_key = gr.State("")  # what the last check showed of the model and the family options
        self.timer = gr.Timer(1.0)

    def _build_presets(self) -> None:
        gr.Markdown("**Start here:** pick a preset, then set the base model and the folders below.",
                    elem_id="start-here")
        with gr.Row():
            self.preset = gr.Dropdown(choices=preset_choices(), value=None, label="Preset (applies when chosen)",
                                      elem_id="preset-select", scale=4)
            self.undo_btn = gr.Button("Undo preset", elem_id="preset-undo", interactive=False, scale=1)
        self.preset_msg = gr.Markdown(elem_id="preset-message")
        self.preset_diff = gr.Markdown(elem_id="preset-diff")
        with gr.Accordion("Save, rename, delete, import, export", open=False, elem_id="preset-tools"):
            with gr.Row():
                self.preset_name = gr.Textbox(label="User preset name", elem_id="preset-name", scale=3)
                self.overwrite = gr.Checkbox(label="Overwrite", elem_id="preset-overwrite")
            with gr.Row():
                self.save_btn = gr.Button("Save as user preset", elem_id="preset-save")
                self.rename_btn = gr.Button("Rename selected to this name", elem_id="preset-rename")
                self.delete_btn = gr.Button("Delete selected user preset", elem_id="preset-delete")
            self.save_msg = gr.Markdown(elem_id="preset-save-message")
            with gr.Row():
                self.kohya_file = gr.File(label="Import a kohya_ss GUI JSON, a TOML or a preset JSON",
                                          file_types=[".json", ".toml"], type="filepath", elem_id="import-kohya")
                with gr.Column():
                    self.export_btn = gr.Button("Export TOML", elem_id="export-toml")
                    self.export_file = gr.File(label="Exported TOML", interactive=False, elem_id="export-file")
            self.import_msg = gr.Markdown(elem_id="import-message")
            with gr.Accordion("Import report", open=False, elem_id="import-report-box"):
                self.import_report = gr.Markdown(elem_id="import-report")

    def _build_lora_type(self) -> None:
        self.lora_type = gr.Radio(list(LORA_TYPES), value="Standard", label="LoRA type", elem_id="lora-type")
        self.lora_hint = gr.Markdown(lora_hint("Standard"), elem_id="lora-type-args")

    def _build_model_picker(self) -> None:
        """Under the base-model field: what the model is, and the folder the picker lists."""
        self.model_facts = gr.HTML(info_html(None), elem_id="model-facts-box")
        self.model_folder = ModelFolder(self.ctx.guard)

    def _build_side(self) -> None:
        with gr.Row():
            self.start_btn = gr.Button("Start (queues if busy)", variant="primary", elem_id="start", interactive=False)
            self.stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
            self.resume_btn = gr.Button("Resume", elem_id="resume", visible=False)
        with gr.Row():
            self.command_btn = gr.Button("Print command", elem_id="print-command")
            self.tb_btn = gr.Button("TensorBoard", elem_id="start-tensorboard")
        self.run_msg = gr.Markdown(elem_id="run-message")
        self.tb_link = gr.Markdown(elem_id="tensorboard-link")
        with gr.Group(visible=False) as self.command_box:
            self.command = gr.Textbox(label="Equivalent command", lines=3, max_lines=8, interactive=False,
                                      buttons=["copy"], elem_id="command")
            with gr.Accordion("TOML", open=False, elem_id="toml-box"):
                self.toml = gr.Code(label="TOML", elem_id="toml")
        self.issues = gr.HTML(issues_html({}, {}), elem_id="issues")
        self.plan_summary = gr.HTML(elem_id="plan-summary")
        with gr.Accordion("Training plan", open=False, elem_id="plan-box"):
            self.plan = gr.HTML(elem_id="plan")
        self.progress = gr.HTML(run_view.progress_html(None), elem_id="progress")
        self.loss_plot = gr.LinePlot(pd.DataFrame({"step": [], "loss": []}), x="step", y="loss",
                                     label="Loss", height=160, elem_id="loss-chart")
        self.samples = gr.Gallery(label="Latest samples", columns=6, height=130, elem_id="samples")
        with gr.Accordion("Scores: the recommendation, or a sweep's ranking", open=True, visible=False,
                          elem_id="run-scores-box") as self.scores_box:
            self.scores = gr.Markdown(elem_id="run-scores")
            self.score_chart = gr.Image(label="Fidelity and drift against epoch", interactive=False, height=220,
                                        elem_id="run-score-chart")
        self._build_sweep()
        self.queue = gr.HTML(elem_id="queue")
        with gr.Row():
            self.cancel_id = gr.Number(label="Queued job #", value=None, precision=0, elem_id="cancel-id")
            self.cancel_btn = gr.Button("Remove from queue", elem_id="cancel-queued")
        self.cancel_msg = gr.Markdown(elem_id="cancel-message")
        self.log = gr.Textbox(label="Log (tail)", lines=8, max_lines=8, interactive=False, autoscroll=True,
                              elem_id="log-tail")

    def _build_sweep(self) -> None:
        with gr.Accordion("Sweep: train variants of this form and rank them", open=False, elem_id="sweep-box"):
            self.sweep_vary = gr.Textbox(label="Vary: one FIELD=V1,V2 per line", lines=2, elem_id="sweep-vary",
                                         placeholder="network_dim=8,16,32\nlearning_rate=0.5,1.0")
            with gr.Row():
                self.sweep_rank = gr.Dropdown(["scores", "validation_loss"], value="scores", label="Rank by",
                                              elem_id="sweep-rank-by")
                self.sweep_grid = gr.Checkbox(label="Grid of each variant's best epoch", value=True,
                                              elem_id="sweep-grid")
            self.sweep_btn = gr.Button("Start sweep (queued)", elem_id="sweep-start")
            self.sweep_msg = gr.Markdown(elem_id="sweep-message")

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
        outputs = [*self.widgets.values(), self.preset_msg, self.undo_values, self.applied, self.undo_btn,
                   self.lora_type, self.lora_hint]
        self._recheck_after(self.preset.input(self.apply_preset, inputs=self.form_inputs | {self.preset},
                                              outputs=outputs, show_progress="hidden"))
        self._recheck_after(self.undo_btn.click(self.undo_preset, inputs=self.undo_values, outputs=outputs))
        self.save_btn.click(self.save_preset, inputs=self.form_inputs | {self.preset_name, self.overwrite},
                            outputs=[self.save_msg, self.preset])
        self.delete_btn.click(self.delete_preset, inputs=self.preset, outputs=[self.save_msg, self.preset])
        self.rename_btn.click(self.rename_preset, inputs=[self.preset, self.preset_name],
                              outputs=[self.save_msg, self.preset])
        self._recheck_after(self.kohya_file.upload(
            self.import_kohya, inputs=self.kohya_file,
            outputs=[*self.widgets.values(), self.import_msg, self.import_report, self.lora_type, self.lora_hint]))
        self.export_btn.click(self.export_toml, inputs=self.form_inputs, outputs=[self.export_file, self.import_msg])

    def refresh_presets(self) -> dict:
        return gr.update(choices=preset_choices())

    def apply_preset(self, data: dict) -> dict:
        """A chosen preset goes into the form at once; the user's paths and output name stay; Undo restores."""
        name = data[self.preset]
        if not name:
            return {self.preset_msg: ""}
        try:
            cfg = load_preset(name)
        except LorasmithError as exc:
            return {self.preset_msg: _error_text(exc)}
        current = self.named(data)
        new, changed, kept = apply_preset(current, cfg)
        note = f"applied: **{name}** ({len(changed)} field{'s' if len(changed) != 1 else ''} changed)"
        if kept:
            note += f"; kept your {', '.join(kept)}"
        applied = {n: new[n] for n in new if n not in kept}
        return {**{self.widgets[n]: v for n, v in new.items()}, self.preset_msg: note, self.undo_values: current,
                self.applied: {"name": name, "values": applied}, self.undo_btn: gr.update(interactive=True),
                **self._lora_type_updates(new)}

    def undo_preset(self, previous: dict | None) -> dict:
        if not previous:
            return {self.preset_msg: "Nothing to undo."}
        return {**{self.widgets[n]: v for n, v in previous.items() if n in self.widgets},
                self.preset_msg: "Undone: the form is back to what it was before the preset.",
                self.undo_values: None, self.applied: None, self.undo_btn: gr.update(interactive=False),
                **self._lora_type_updates(previous)}

    def _lora_type_updates(self, values: dict) -> dict:
        kind = lora_type_of(values.get("network_module"), values.get("network_args"))
        return {self.lora_type: kind, self.lora_hint: lora_hint(kind)}

    def save_preset(self, data: dict) -> dict:
        name = (data[self.preset_name] or "").strip()
        try:
            cfg = values_to_config(self.named(data))
            path = save_user_preset(cfg, name, overwrite=bool(data[self.overwrite]))
        except LorasmithError as exc:
            return {self.save_msg: _error_text(exc)}
        return {self.save_msg: f"Saved user preset **{name}** ({path.name}).",
                self.preset: gr.update(choices=preset_choices())}

    def delete_preset(self, name: str | None) -> dict:
        try:
            delete_user_preset(name or "")
        except LorasmithError as exc:
            return {self.save_msg: _error_text(exc)}
        return {self.save_msg: f"Deleted user preset **{name}**.", self.preset: gr.update(choices=preset_choices(), value=None)}

    def rename_preset(self, old: str | None, new: str) -> dict:
        try:
            rename_user_preset(old or "", (new or "").strip())
        except LorasmithError as exc:
            return {self.save_msg: _error_text(exc)}
        return {self.save_msg: f"Renamed **{old}** to **{new.strip()}**.",
                self.preset: gr.update(choices=preset_choices(), value=new.strip())}

    def import_kohya(self, path: str | None) -> dict:
        """A kohya_ss GUI JSON (or a TOML / preset JSON) onto the defaults; the report folds into a box."""
        if not path:
            return {self.import_msg: ""}
        try:
            cfg, summary = self._import_config(Path(path))
        except LorasmithError as exc:
            return {self.import_msg: _error_text(exc)}
        text = html.escape(summary).replace("\n", "  \n")
        values = config_to_values(cfg)
        return {**self._form_updates(cfg), **self._lora_type_updates(values),
                self.import_msg: f"Imported **{Path(path).name}**: see the import report below for what to check.",
                self.import_report: text}

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
            return {self.import_msg: _error_text(exc), self.export_file: None}
        folder = Path(tempfile.mkdtemp(prefix="lorasmith-export-"))
        path = folder / f"{cfg.output_name or 'config'}.toml"
        path.write_text(config_to_toml(cfg), encoding="utf-8")
        return {self.export_file: str(path), self.import_msg: f"Exported {path.name}."}

    # --- checks, plan, command -----------------------------------------------------------------
    def _wire_checks(self) -> None:
        # `.input` fires on the user's edits only; a preset load re-checks once through `_recheck_after`.
        # `.blur` catches pasted text, which some browsers deliver without an input event.
        gr.on(_edit_triggers(self.widgets.values()), self.check_form, **self._check_args)
        self.command_btn.click(self.print_command, inputs=self.form_inputs,
                               outputs=[self.command, self.toml, self.command_box, self.run_msg])
        self._recheck_after(self.lora_type.input(self.switch_lora_type,
                                                 inputs=[self.lora_type, self.widgets["network_args"]],
                                                 outputs=[self.widgets["network_module"], self.widgets["network_args"],
                                                          self.lora_hint]))
        self.widgets["network_module"].input(self.module_changed, inputs=[self.widgets["network_module"],
                                                                          self.widgets["network_args"]],
                                             outputs=[self.lora_type, self.lora_hint], show_progress="hidden")

    def check_on_load(self, demo) -> None:
        demo.load(self.check_form, **self._check_args)
        self.model_folder.wire(self.widgets[MODEL_FIELD], demo)

    def switch_lora_type(self, kind: str, args_text: str | None) -> dict:
        """The picker sets network_module and the args that make the type; args that no longer apply go."""
        module, args, dropped = switch_lora(kind, args_text)
        note = lora_hint(kind) + (f"  \nRemoved (not an option of {kind}): {', '.join(dropped)}" if dropped else "")
        return {self.widgets["network_module"]: module, self.widgets["network_args"]: args, self.lora_hint: note}

    def module_changed(self, module: str | None, args_text: str | None) -> dict:
        kind = lora_type_of(module, args_text)
        return {self.lora_type: kind, self.lora_hint: lora_hint(kind)}

    @property
    def _check_args(self) -> dict:
        return {"inputs": self.form_inputs | {self.applied, self.plan_key, self.family_key},
                "outputs": [self.issues, self.start_btn, self.plan_summary, self.plan, self.plan_key, self.preset_diff,
                            self.model_facts, self.family_key, *(self.widgets[n] for n in family_options())],
                "trigger_mode": "always_last", "show_progress": "hidden"}

    def _recheck_after(self, event) -> None:
        event.then(self.check_form, **self._check_args)

    def check_form(self, data: dict) -> dict:
        """Errors panel (with the per-field messages), Start's state, the plan and the preset differences."""
        values = self.named(data)
        cfg, errors, warnings = form_issues(values, self.ctx.guard, for_training=True)
        out: dict = {self.issues: issues_html(errors, warnings),
                     self.start_btn: gr.update(interactive=not errors and cfg is not None)}
        plan_errors = {n: m for n, m in errors.items() if n in PLAN_FIELDS or n == "form"}
        key = repr((sorted(plan_errors), [values.get(n) for n in PLAN_FIELDS]))
        if key != data[self.plan_key]:
            summary, table = plan_html(cfg, self.ctx.guard, plan_errors)
            out.update({self.plan_summary: summary_html(summary, table), self.plan: table, self.plan_key: key})
        else:
            out.update({self.plan_summary: gr.skip(), self.plan: gr.skip(), self.plan_key: gr.skip()})
        out.update(self._family_updates(cfg, data.get(self.family_key, "")))
        applied = data[self.applied]
        if applied:
            diff = differs(values, applied["values"])
            out[self.preset_diff] = (f"Differs from **{applied['name']}**: " + ", ".join(diff)) if diff else \
                f"Same as **{applied['name']}** (apart from your folders and names)."
        else:
            out[self.preset_diff] = ""
        return out

    def _family_updates(self, cfg: TrainConfig | None, last: str) -> dict:
        """The model's family line, and the family-limited options shown only where they apply (or are set)."""
        family_widgets = [self.widgets[n] for n in family_options()]
        if cfg is None:  # a type error elsewhere: keep what is shown
            return {c: gr.skip() for c in (self.model_facts, self.family_key, *family_widgets)}
        info = picked_model(cfg, self.ctx.guard)
        shown = field_visibility(info.family if info else None, {n: getattr(cfg, n) for n in family_options()})
        facts = info_html(info)
        key = repr((facts, sorted(shown.items())))
        if key == last:
            return {c: gr.skip() for c in (self.model_facts, self.family_key, *family_widgets)}
        return {self.model_facts: facts, self.family_key: key,
                **{self.widgets[n]: gr.update(visible=v) for n, v in shown.items()}}

    def print_command(self, data: dict) -> dict:
        try:
            cfg = values_to_config(self.named(data))
        except LorasmithError as exc:
            return {self.run_msg: _error_text(exc)}
        return {self.command: command_string(cfg), self.toml: config_to_toml(cfg),
                self.command_box: gr.update(visible=True), self.run_msg: "The command is below; the copy button copies it."}

    # --- run ----------------------------------------------------------------------------------
    def _wire_run(self) -> None:
        live = self.live_outputs
        self.start_btn.click(self.start, inputs=self.form_inputs, outputs=[self.run_msg, self.issues, *live])
        self.stop_btn.click(self.stop, outputs=self.run_msg)
        self.resume_btn.click(self.resume, outputs=[self.run_msg, *live])
        self.sweep_btn.click(self.start_sweep, inputs=self.form_inputs | {self.sweep_vary, self.sweep_rank, self.sweep_grid},
                             outputs=[self.sweep_msg, self.run_msg, self.issues, *live])
        self.cancel_btn.click(self.cancel, inputs=self.cancel_id, outputs=self.cancel_msg)
        self.tb_btn.click(self.start_tensorboard, inputs=self.form_inputs, outputs=self.tb_link)
        self.timer.tick(self.refresh, inputs=self.seen, outputs=live, show_progress="hidden")

    def start(self, data: dict) -> dict:
        cfg, errors, warnings = form_issues(self.named(data), self.ctx.guard, for_training=True)
        if errors or cfg is None:
            return {self.run_msg: f"Not started: {len(errors)} problem(s), listed under the fields and below.",
                    self.issues: issues_html(errors, warnings)}
        return self._submit(self.ctx.guard.absolutize(cfg), "")

    def start_sweep(self, data: dict) -> dict:
        """Queue `lorasmith sweep` with the form as the base config and the fields to vary."""
        from gui.sweep_view import sweep_args, variant_count

        cfg, errors, warnings = form_issues(self.named(data), self.ctx.guard, for_training=True)
        if errors or cfg is None:
            return {self.sweep_msg: f"Not started: {len(errors)} problem(s) in the form, listed under the fields.",
                    self.issues: issues_html(errors, warnings)}
        try:
            args = sweep_args(data[self.sweep_vary], data[self.sweep_rank] or "scores", bool(data[self.sweep_grid]))
            count = variant_count(data[self.sweep_vary])
        except LorasmithError as exc:
            return {self.sweep_msg: _error_text(exc)}
        out = self._submit(self.ctx.guard.absolutize(cfg), f"({count} variants) ", kind="sweep", args=args,
                           name=f"sweep {cfg.output_name or ''}".strip())
        return {**out, self.sweep_msg: f"Sweep of {count} variants queued; they train one after another into "
                                       f"`{cfg.output_dir}`, then the ranking shows in this panel."}

    def _submit(self, cfg: TrainConfig, what: str, kind: str = "train", args: list[str] | None = None,
                name: str | None = None) -> dict:
        job = self.ctx.jobs.submit(cfg, name=name, kind=kind, args=args)
        if job.state == "queued":
            running = self.ctx.jobs.current()
            behind = f" (#{running.id} {running.name} is {running.state})" if running and running.state in ("running", "stopping") else ""
            where = run_view.state_label(job, self.ctx.jobs) + behind
        else:
            where = "started"
        seen = {"run-message": repr((job.id, job.state))}
        return {**self.refresh(seen), self.run_msg: f"Job #{job.id} **{job.name}** {what}{where}."}

    def resume(self) -> dict:
        """Queue the stopped run again from the state it saved (its config with resume = that folder)."""
        import dataclasses

        job = self.ctx.jobs.current()
        if run_view.can_resume(job) and job.kind == "sweep":
            return self._submit(job.config, "continues: ", kind="sweep", args=job.args, name=job.name)
        folder = run_view.state_folder(job) if job is not None and job.state == "stopped" else None
        if folder is None:
            return {self.run_msg: "Nothing to resume: the last run did not stop with a saved state."}
        return self._submit(dataclasses.replace(job.config, resume=str(folder)), f"resumes from step {job.progress.step}: ")

    @property
    def live_outputs(self) -> list:
        return [self.progress, self.loss_plot, self.samples, self.log, self.queue, self.run_msg, self.resume_btn,
                self.scores, self.score_chart, self.scores_box, self.seen]

    def stop(self) -> str:
        job = self.ctx.jobs.current()
        answer = self.ctx.jobs.stop()
        if answer == "nothing is running":
            return "Nothing is running."
        if answer == "killed":
            return f"Job #{job.id} killed: files being written keep their previous version."
        return f"Job #{job.id} **stopping**: it finishes this step, saves the state and a LoRA, then ends (Stop again kills it)."

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
        ended = job is not None and job.state in ("stopped", "finished", "failed")
        fresh = {
            self.progress: (run_view.progress_html(job), None),
            self.loss_plot: ((job.id if job else None, len(rows), rows[-1] if rows else None),
                             lambda: pd.DataFrame(rows, columns=["step", "loss"])),
            self.samples: (tuple(run_view.sample_images(job, self.ctx.guard)), None),
            self.log: (job.log_tail() if job else "", None),
            self.queue: (run_view.queue_html(self.ctx.jobs), None),
            # The answer under Start/Stop follows the run: "stopping…" becomes what was saved.
            self.run_msg: ((job.id, job.state) if ended else None, lambda: run_view.run_message(job, self.ctx.jobs)),
            self.resume_btn: (run_view.can_resume(job), lambda: gr.update(visible=run_view.can_resume(job))),
        }
        score_key = self._score_key(job)
        fresh[self.scores] = (score_key, lambda: self._scores_view(job))
        seen = dict(seen or {})
        out: dict = {}
        for comp, (key, make) in fresh.items():
            name = comp.elem_id
            if seen.get(name) == repr(key) or (comp is self.run_msg and key is None):
                out[comp] = gr.skip()
                continue
            seen[name] = repr(key)
            value = make() if make else key
            if comp is self.scores:  # one view fills three components
                out.update(value)
                continue
            out[comp] = list(value) if isinstance(value, tuple) and comp is self.samples else value
        out.setdefault(self.score_chart, gr.skip())
        out.setdefault(self.scores_box, gr.skip())
        out[self.seen] = seen
        return out

    @staticmethod
    def _score_key(job) -> tuple:
        """Changes when the run scores another epoch, or an evaluation.json appears for its files."""
        if job is None:
            return (None,)
        from gui.scores_view import evaluation_json
        from gui.sweep_view import ranking_path

        if job.kind == "sweep":
            path = ranking_path(job.config) if job.state in ("finished", "failed", "stopped") else None
            return (job.id, job.state, str(path), path.stat().st_mtime if path else None)
        path = None if job.progress.scores else evaluation_json(job.config)
        return (job.id, len(job.progress.scores), str(path), path.stat().st_mtime if path else None)

    def _scores_view(self, job) -> dict:
        """The run's score table, chart and recommendation (issue 18), hidden while it has none."""
        from gui.scores_view import run_scores_markdown
        from gui.sweep_view import ranking_markdown, ranking_path

        if job is not None and job.kind == "sweep":
            path = ranking_path(job.config) if job.state in ("finished", "failed", "stopped") else None
            table, chart = ranking_markdown(path) if path else ("", None)
        else:
            table, chart = run_scores_markdown(job.progress, job.config) if job is not None else ("", None)
        return {self.scores: table, self.score_chart: chart, self.scores_box: gr.update(visible=bool(table))}

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
