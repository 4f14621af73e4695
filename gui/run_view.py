"""How a job looks in the page: progress bar, loss chart data, samples, queue (pure rendering)."""
from __future__ import annotations

import html
from pathlib import Path

from gui.jobs import Job, JobManager
from gui.progress import status_line
from gui.safety import PathGuard

MAX_SAMPLES = 8
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def progress_html(job: Job | None) -> str:
    """A bar with data attributes the browser tests read, plus the status line."""
    if job is None:
        return '<div id="ls-progress" data-state="idle" data-fraction="0">No training run yet.</div>'
    p = job.progress
    pct = round(100 * p.fraction, 1)
    color = {"failed": "#c0392b", "stopped": "#d68910"}.get(job.state, "#2e86c1")
    error = f'<div class="ls-error">{html.escape(p.error)}</div>' if p.error else ""
    return (
        f'<div id="ls-progress" data-state="{job.state}" data-fraction="{p.fraction:.4f}" data-step="{p.step}">'
        f'<div><b>{html.escape(job.name)}</b> — {job.state} — <span id="ls-percent">{pct:g}%</span></div>'
        f'<div style="background:#ddd;border-radius:4px;height:14px;overflow:hidden">'
        f'<div style="width:{pct}%;background:{color};height:14px"></div></div>'
        f'<div id="ls-status">{html.escape(status_line(p))}</div>{error}</div>'
    )


def loss_rows(job: Job | None) -> list[tuple[int, float]]:
    return list(job.progress.losses) if job else []


def sample_images(job: Job | None, guard: PathGuard) -> list[str]:
    """Newest sample images of the job: from its events, else from <output_dir>/sample/."""
    if job is None:
        return []
    paths = [Path(p) for p in job.progress.samples]
    if not paths and job.config.output_dir:
        folder = Path(job.config.output_dir) / "sample"
        if folder.is_dir():
            paths = sorted((p for p in folder.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES),
                           key=lambda p: p.stat().st_mtime)
    shown = [p for p in paths if p.is_file() and guard.allows(p)]
    return [str(p) for p in shown[-MAX_SAMPLES:]][::-1]


def queue_markdown(jobs: JobManager) -> str:
    lines = []
    for job in jobs.jobs[-20:]:
        lines.append(f"- #{job.id} **{job.name}** — {job.state}" + (f" (exit {job.returncode})" if job.returncode not in (None, 0) else ""))
    return "**Queue and history**\n" + "\n".join(lines) if lines else "Queue is empty."


def saved_files(job: Job | None) -> list[str]:
    """LoRA files in the job's output folder (what the Evaluate tab offers)."""
    if job is None or not job.config.output_dir:
        return []
    folder = Path(job.config.output_dir)
    return sorted(str(p) for p in folder.glob("*.safetensors")) if folder.is_dir() else []
