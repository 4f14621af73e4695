"""The History tab: every run the GUI has started, with its config, plan, loss, files, grids and TensorBoard.

Runs are read back from the job folders (gui.history), so the list survives a
restart of the GUI; "Load this config into the form" puts a past run's settings
into the Training tab, where the usual checks run on them.
"""
from __future__ import annotations

import gradio as gr

from gui import history
from gui.context import GuiContext
from library.errors import LorasmithError


class HistoryTab:
    def __init__(self, ctx: GuiContext, training) -> None:
        self.ctx = ctx
        self.training = training
        self._build()
        self._wire()

    def _build(self) -> None:
        gr.Markdown("Past runs started from this GUI (newest first), read from its job folder "
                    f"`{self.ctx.jobs.jobs_dir}`.")
        with gr.Row():
            self.refresh_btn = gr.Button("Refresh", elem_id="history-refresh", scale=1)
            self.pick = gr.Dropdown(choices=[], value=None, label="Run", elem_id="history-run", scale=4)
        self.table = gr.HTML(history.runs_table([]), elem_id="history-table")
        with gr.Row():
            self.load_btn = gr.Button("Load this config into the form", variant="primary", elem_id="history-load")
            self.tb_btn = gr.Button("TensorBoard for this run", elem_id="history-tensorboard")
        self.message = gr.Markdown(elem_id="history-message")
        self.details = gr.Markdown(elem_id="history-details")
        self.scores = gr.Markdown(elem_id="history-scores")
        self.score_chart = gr.Image(label="Scores against epoch", type="filepath", interactive=False,
                                    visible=False, elem_id="history-score-chart")
        self.grids = gr.Gallery(label="Grids made from this run", columns=3, height=260, visible=False,
                                elem_id="history-grids")
        with gr.Accordion("Config (TOML)", open=False, elem_id="history-config-box"):
            self.config = gr.Code(language="toml" if "toml" in getattr(gr.Code, "languages", ()) else None,
                                  elem_id="history-config")

    def _wire(self) -> None:
        self.refresh_btn.click(self.refresh, inputs=self.pick, outputs=[self.table, self.pick])
        detail_outputs = [self.details, self.config, self.grids, self.scores, self.score_chart, self.message]
        self.pick.change(self.show, inputs=self.pick, outputs=detail_outputs)
        t = self.training
        outputs = [*t.widgets.values(), t.lora_type, t.lora_hint, self.message]
        t._recheck_after(self.load_btn.click(self.load_into_form, inputs=self.pick, outputs=outputs))
        self.tb_btn.click(self.tensorboard, inputs=self.pick, outputs=self.message)

    def tab_select(self, tab) -> None:
        """Opening the tab refreshes the list (runs may have ended since)."""
        tab.select(self.refresh, inputs=self.pick, outputs=[self.table, self.pick])

    # --- handlers ---------------------------------------------------------------------
    def _records(self) -> list[history.RunRecord]:
        self.ctx.jobs.poll()
        records = history.scan_runs(self.ctx.jobs.jobs_dir)
        live = {j.folder.name: j.state for j in self.ctx.jobs.jobs}
        for r in records:  # the queue knows better than the events file about a run still going
            if r.id in live and live[r.id] in ("running", "stopping", "queued"):
                r.state = live[r.id]
        return records

    def _record(self, run_id: str | None) -> history.RunRecord | None:
        if not run_id:
            return None
        folder = self.ctx.jobs.jobs_dir / run_id
        if folder.parent != self.ctx.jobs.jobs_dir or not folder.is_dir():
            return None
        return history.read_run(folder)

    def refresh(self, current: str | None = None) -> dict:
        records = self._records()
        choices = [(r.label(), r.id) for r in records]
        value = current if any(c[1] == current for c in choices) else (choices[0][1] if choices else None)
        return {self.table: history.runs_table(records), self.pick: gr.update(choices=choices, value=value)}

    def show(self, run_id: str | None) -> dict:
        record = self._record(run_id)
        if record is None:
            return {self.details: "", self.config: "", self.grids: gr.update(value=[], visible=False), self.scores: "",
                    self.score_chart: gr.update(visible=False), self.message: ""}
        from gui.scores_view import run_scores_markdown
        from gui.sweep_view import ranking_markdown, ranking_path

        guard = self.ctx.guard
        grids = [g for g in history.grids(record) if guard.allows(g)]
        if record.kind == "sweep":
            path = ranking_path(record.config)
            table, chart = ranking_markdown(path) if path else ("The sweep has no ranking yet.", None)
        else:
            table, chart = run_scores_markdown(record.progress, record.config)
        return {self.details: history.details_markdown(record), self.config: history.config_text(record),
                self.grids: gr.update(value=grids, visible=bool(grids)),
                self.scores: table, self.score_chart: gr.update(value=chart, visible=bool(chart)), self.message: ""}

    def load_into_form(self, run_id: str | None) -> dict:
        record = self._record(run_id)
        cfg = history.loadable_config(record) if record is not None else None
        if cfg is None:
            why = record.config_error if record is not None and record.config_error else "pick a run first"
            return {self.message: f"Nothing loaded: {why}."}
        t = self.training
        from gui.form import config_to_values

        return {**t._form_updates(cfg), **t._lora_type_updates(config_to_values(cfg)),
                self.message: f"Loaded the config of **{record.name}** ({record.id}) into the Training tab; "
                              "it is checked there before it can start."}

    def tensorboard(self, run_id: str | None) -> str:
        record = self._record(run_id)
        logdir = history.log_dir(record) if record is not None else None
        if logdir is None:
            return "This run wrote no TensorBoard logs (set logging_dir before training)."
        try:
            path = self.ctx.guard.check(logdir, "logging_dir")
        except LorasmithError as exc:
            return "**Error:** " + str(exc)
        url = self.ctx.tensorboard.start(path)
        return f"TensorBoard for `{path}`: [{url}]({url}) (stops with the GUI)"
