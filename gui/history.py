"""Past runs, read back from the job folders the GUI wrote (pure functions, no Gradio).

Every run the GUI starts gets a folder under its jobs folder holding the config
it ran (`config.toml`), the trainer's events (`progress.jsonl`) and its output
(`train.log`).  Those files outlive the GUI process, so the history survives a
restart: each record is rebuilt by replaying the events into the same
`Progress` the live panel uses.  Nothing here writes.
"""
from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path

from gui.progress import Progress, ProgressFile
from library.config import TrainConfig

MAX_RUNS = 100
GRID_PATTERNS = ("grids/xyz_grid-*.png", "xyz_grid-*.png", "grids/*/xyz_grid-*.png")
FINISHED, STOPPED, FAILED, INCOMPLETE = "finished", "stopped", "failed", "incomplete"


@dataclass
class RunRecord:
    """One past (or running) run: its folder, config, replayed progress and outcome."""

    folder: Path
    config: TrainConfig | None
    progress: Progress
    state: str
    started: float
    config_error: str | None = None
    kind: str = "train"  # or "sweep"
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.folder.name

    @property
    def name(self) -> str:
        if self.config is not None and self.config.output_name:
            return self.config.output_name
        return self.folder.name

    @property
    def final_loss(self) -> float | None:
        """The last epoch's average loss, else the last step's loss."""
        p = self.progress
        return p.avg_loss if p.avg_loss is not None else p.loss

    def label(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started))
        return f"{when} · {self.name} · {self.state}"


def replay(progress_path: Path) -> Progress:
    """The Progress a page would have shown at the end of the run, from its events file."""
    p = Progress(started_at=progress_path.stat().st_mtime if progress_path.exists() else time.time())
    first = True
    for event in ProgressFile(progress_path).read_new():
        now = event.get("time") if isinstance(event.get("time"), (int, float)) else None
        if first and now is not None:
            p.started_at = float(now)
            first = False
        p.apply(event, now=now)
    return p


def outcome(p: Progress) -> str:
    if p.error is not None:
        return FAILED
    if p.finished:
        return STOPPED if p.stopped else FINISHED
    return INCOMPLETE  # killed, crashed, or still running (the caller knows live jobs)


def read_run(folder: Path) -> RunRecord | None:
    """The record of one job folder (None when it is not one)."""
    config_path = folder / "config.toml"
    if not config_path.is_file():
        return None
    from library.config_resolve import load_config_source
    from library.errors import LorasmithError

    cfg, problem = None, None
    try:
        cfg = load_config_source(config_path)
    except LorasmithError as exc:
        problem = str(exc)
    progress = replay(folder / "progress.jsonl")
    if (folder / "sweep-args.json").is_file():  # a sweep: no events file; its outcome is in its log and ranking
        from gui.sweep_view import ranking_path, sweep_task

        try:
            task = sweep_task((folder / "train.log").read_text(encoding="utf-8", errors="replace")[-200_000:])
        except OSError:
            task = None
        progress.task = task
        if cfg is not None and ranking_path(cfg) is not None:
            progress.finished = True
    from gui.jobs import SWEEP_ARGS_FILE

    kind = "sweep" if (folder / SWEEP_ARGS_FILE).is_file() else "train"
    return RunRecord(folder, cfg, progress, outcome(progress), _started(folder), problem, kind)


def _started(folder: Path) -> float:
    try:
        return (folder / "config.toml").stat().st_mtime
    except OSError:
        return 0.0


def scan_runs(jobs_dir: Path, limit: int = MAX_RUNS) -> list[RunRecord]:
    """The job folders under `jobs_dir`, newest first."""
    if not jobs_dir.is_dir():
        return []
    folders = sorted((f for f in jobs_dir.iterdir() if f.is_dir() and (f / "config.toml").is_file()),
                     key=_started, reverse=True)[:limit]
    return [r for r in (read_run(f) for f in folders) if r is not None]


def lora_files(record: RunRecord) -> list[str]:
    """LoRA files the run saved that still exist, else those of its name in its output folder."""
    saved = [p for p in dict.fromkeys(record.progress.saved) if p.endswith(".safetensors") and Path(p).is_file()]
    if saved:
        return saved
    cfg = record.config
    if cfg is None or not cfg.output_dir or not Path(cfg.output_dir).is_dir():
        return []
    return sorted(str(p) for p in Path(cfg.output_dir).glob(f"{cfg.output_name or ''}*.safetensors"))


def grids(record: RunRecord, limit: int = 6) -> list[str]:
    """Grid images made from the run's output folder (the Evaluate tab writes them to <output_dir>/grids)."""
    cfg = record.config
    if cfg is None or not cfg.output_dir:
        return []
    out = Path(cfg.output_dir)
    found = {p for pattern in GRID_PATTERNS for p in out.glob(pattern)}
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)[:limit]]


def log_dir(record: RunRecord) -> str | None:
    """The TensorBoard folder of the run (the one it reported, else its logging_dir), when it exists."""
    cfg = record.config
    for candidate in (record.progress.log_dir, cfg.logging_dir if cfg else None):
        if candidate and Path(candidate).is_dir():
            return candidate
    return None


def _num(value: float | None, fmt: str = ".4f") -> str:
    return format(value, fmt) if value is not None else "–"


def runs_table(records: list[RunRecord]) -> str:
    """An HTML table of the runs (newest first) with data attributes the browser tests read."""
    if not records:
        return '<div id="ls-history-table" data-runs="0">No runs yet: runs started from the Training tab appear here.</div>'
    rows = []
    for r in records:
        p = r.progress
        total = p.total_steps or "?"
        rows.append(
            f'<tr data-run="{html.escape(r.id)}" data-state="{r.state}">'
            f'<td>{html.escape(time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)))}</td>'
            f'<td>{html.escape(r.name)}</td><td>{html.escape(r.kind)}</td><td>{r.state}</td>'
            f'<td class="n">{p.step}/{total}</td><td class="n">{_num(r.final_loss)}</td>'
            f'<td class="n">{len(lora_files(r))}</td></tr>')
    return (f'<table id="ls-history-table" class="ls-table" data-runs="{len(records)}"><tr><th>started</th><th>name</th>'
            '<th>kind</th><th>state</th><th>steps</th><th>final loss</th><th>LoRA files</th></tr>'
            + "".join(rows) + "</table>")


def details_markdown(record: RunRecord) -> str:
    """Outcome, plan, final loss and files of one run."""
    p, cfg = record.progress, record.config
    lines = [f"### {html.escape(record.name)} — {record.state}",
             f"Folder `{record.folder}` · step {p.step}/{p.total_steps or '?'} · epoch {p.epoch}/{p.total_epochs or '?'}"
             f" · final loss **{_num(record.final_loss)}**"
             + (f" · validation loss {_num(p.val_loss)}" if p.val_loss is not None else "")]
    if p.error:
        lines.append(f"**Error:** {html.escape(p.error)}")
    if record.config_error:
        lines.append(f"**Its config cannot be read:** {html.escape(record.config_error)}")
    files = lora_files(record)
    lines.append("**Files:** " + (", ".join(f"`{f}`" for f in files) if files else "none"))
    if cfg is not None and cfg.output_dir:
        state = Path(cfg.output_dir) / f"{cfg.output_name}-state"
        if (state / "train_state.pt").is_file():
            lines.append(f"**Saved state:** `{state}` (set `resume` to it to continue)")
    plan = (p.plan or {}).get("text") if isinstance(p.plan, dict) else None
    if plan:
        lines.append("**Plan**\n```\n" + str(plan).strip() + "\n```")
    return "\n\n".join(lines)


def config_text(record: RunRecord) -> str:
    try:
        return (record.folder / "config.toml").read_text(encoding="utf-8")
    except OSError as exc:
        return f"# cannot read {record.folder / 'config.toml'}: {exc}"


def loadable_config(record: RunRecord) -> TrainConfig | None:
    """The run's config as a form would start it again: fresh (no resume), no progress file."""
    import dataclasses

    if record.config is None:
        return None
    return dataclasses.replace(record.config, resume=None, progress_file=None)
