"""How a job looks in the page: progress bar, loss chart data, samples, queue (pure rendering)."""
from __future__ import annotations

import html
from pathlib import Path

from gui.jobs import DONE_STATES, FAILED, FINISHED, QUEUED, RUNNING, STOPPED, STOPPING, Job, JobManager
from gui.progress import status_line, task_line
from gui.safety import PathGuard

MAX_SAMPLES = 8
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def progress_html(job: Job | None) -> str:
    """A bar with data attributes the browser tests read, plus the status line."""
    if job is None:
        return '<div id="ls-progress" data-state="idle" data-fraction="0">No training run yet.</div>'
    p = job.progress
    fraction = p.fraction
    if job.kind == "sweep":  # variants done of all
        fraction = 1.0 if job.state == FINISHED else (p.task["done"] / max(1, p.task["total"]) if p.task else 0.0)
    pct = round(100 * fraction, 1)
    color = {"failed": "#c0392b", "stopped": "#d68910"}.get(job.state, "#2e86c1")
    error = f'<div class="ls-error">{html.escape(p.error)}</div>' if p.error else ""
    task = ""
    if p.task and job.state in ("running", "stopping"):  # e.g. caching latents before the first step
        t = p.task
        task = (f'<div id="ls-task" data-what="{html.escape(t["what"])}" data-done="{t["done"]}" data-total="{t["total"]}">'
                f'{html.escape(task_line(t))}</div>')
    return (
        f'<div id="ls-progress" data-state="{job.state}" data-kind="{job.kind}" data-fraction="{fraction:.4f}" data-step="{p.step}">'
        f'<div><b>{html.escape(job.name)}</b> — {job.state} — <span id="ls-percent">{pct:g}%</span></div>'
        f'<div style="background:#ddd;border-radius:4px;height:14px;overflow:hidden">'
        f'<div style="width:{pct}%;background:{color};height:14px"></div></div>'
        f'{task}<div id="ls-status">{html.escape(_status(job))}</div>{error}</div>'
    )


def _status(job: Job) -> str:
    if job.kind == "sweep":
        return "sweep: " + (task_line(job.progress.task) if job.progress.task else "preparing the variants")
    return status_line(job.progress, live=job.state not in DONE_STATES)


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


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _names(paths: list[str]) -> str:
    return ", ".join(Path(p).name for p in paths) if paths else "none"


def state_label(job: Job, jobs: JobManager) -> str:
    """Exact words for a job's state: 'running', 'queued 2nd', 'stopping', 'stopped at step 37 — files: …'."""
    if job.state == QUEUED:
        waiting = jobs.queued()
        return f"queued {ordinal(waiting.index(job) + 1)}" if job in waiting else "queued"
    if job.kind == "sweep" and job.state in (RUNNING, FINISHED):
        task = job.progress.task
        doing = f" — {task['what']}" if task and job.state == RUNNING else ""
        return f"{job.state} sweep{doing}" + (f" — ranking in {job.config.output_dir}" if job.state == FINISHED else "")
    if job.state == RUNNING:
        total = job.progress.total_steps
        return f"running — step {job.progress.step}/{total}" if total else "running"
    if job.state == STOPPING:
        return f"stopping at step {job.progress.step}: finishing the step and saving"
    files = job_files(job)
    if job.state == STOPPED:
        return f"stopped at step {job.progress.step} — files: {_names(files)}"
    if job.state == FINISHED:
        return f"finished at step {job.progress.step} — files: {_names(files)}"
    if job.state == FAILED:
        why = job.progress.error or f"exit {job.returncode}"
        return f"failed (exit {job.returncode}): {why}"
    return job.state


def job_files(job: Job) -> list[str]:
    """LoRA files the run reported saving (that still exist), else what its output folder holds of its name."""
    saved = [p for p in dict.fromkeys(job.progress.saved) if Path(p).is_file()]
    if saved:
        return saved
    return [p for p in saved_files(job) if Path(p).name.startswith(job.config.output_name or "")]


def state_folder(job: Job) -> Path | None:
    """The `<output_name>-state` folder a stopped run wrote (what Resume continues from)."""
    if not job.config.output_dir:
        return None
    folder = Path(job.config.output_dir) / f"{job.config.output_name}-state"
    return folder if (folder / "train_state.pt").is_file() else None


def can_resume(job: Job | None) -> bool:
    """A stopped run with a saved state, or a stopped sweep (it continues where it stopped)."""
    if job is None or job.state != STOPPED:
        return False
    return job.kind == "sweep" or state_folder(job) is not None


def run_message(job: Job | None, jobs: JobManager) -> str:
    """The answer under Start/Stop once a run has ended: what happened and what was saved."""
    if job is None:
        return ""
    head = f"Job #{job.id} **{html.escape(job.name)}** {html.escape(state_label(job, jobs))}."
    if job.state == STOPPED and job.kind == "sweep":
        head += "  \n**Resume** runs the same sweep again: finished variants are skipped, the stopped one continues."
    elif job.state == STOPPED:
        state = state_folder(job)
        head += (f"  \nSaved the training state in `{state}`: **Resume** continues from step {job.progress.step}."
                 if state else "  \nNo training state was saved, so Resume is not possible.")
    return head


def queue_html(jobs: JobManager) -> str:
    items = []
    for job in jobs.jobs[-20:]:
        items.append(f'<li data-job="{job.id}" data-state="{job.state}">#{job.id} <b>{html.escape(job.name)}</b> — '
                     f'<span class="ls-queue-state">{html.escape(state_label(job, jobs))}</span></li>')
    if not items:
        return '<div id="ls-queue">Queue is empty.</div>'
    return '<div id="ls-queue"><b>Queue and history</b><ul class="ls-queue">' + "".join(items) + "</ul></div>"


def queue_markdown(jobs: JobManager) -> str:
    lines = [f"- #{job.id} **{job.name}** — {state_label(job, jobs)}" for job in jobs.jobs[-20:]]
    return "**Queue and history**\n" + "\n".join(lines) if lines else "Queue is empty."


def saved_files(job: Job | None) -> list[str]:
    """LoRA files in the job's output folder (what the Evaluate tab offers)."""
    if job is None or not job.config.output_dir:
        return []
    folder = Path(job.config.output_dir)
    return sorted(str(p) for p in folder.glob("*.safetensors")) if folder.is_dir() else []
