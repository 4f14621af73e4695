"""A training job's live state, built from the trainer's progress events.

The trainer (`lorasmith train --progress_file PATH`) appends one JSON object
per line; `ProgressFile` reads only the complete new lines on every poll and
`Progress.apply` folds each event into the numbers the page shows.  Nobody
parses tqdm text.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_LOSS_POINTS = 2000


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass
class Progress:
    """What the progress bar, loss chart and sample gallery show."""

    step: int = 0
    total_steps: int | None = None
    epoch: int = 0
    total_epochs: int | None = None
    loss: float | None = None
    avg_loss: float | None = None
    lr: float | None = None
    d_lr: float | None = None
    s_per_step: float | None = None
    eta_s: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    val_loss: float | None = None  # the latest validation loss (--validation_split)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    samples: list[str] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    plan: dict | None = None
    finished: bool = False
    stopped: bool = False
    log_dir: str | None = None
    error: str | None = None
    scores: list[dict] = field(default_factory=list)  # --evaluate_every_n_epochs: EpochScore dicts so far
    recommendation: dict | None = None  # the running recommendation that came with them
    task: dict | None = None  # a long action before/between steps: {"what", "done", "total", "eta_s", ...}
    started_at: float = field(default_factory=time.time)
    first_step_at: tuple[float, int] | None = None

    @property
    def fraction(self) -> float:
        if self.finished and self.error is None and not self.stopped:
            return 1.0
        if not self.total_steps:
            return 0.0
        return min(1.0, self.step / self.total_steps)

    def apply(self, event: dict[str, Any], now: float | None = None) -> None:
        """Fold one event in; unknown events and fields are ignored (newer trainers may add some)."""
        now = time.time() if now is None else now
        kind = str(event.get("event") or event.get("type") or "")
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, event, now)

    def _timing(self, event: dict[str, Any], now: float) -> None:
        given = _num(event.get("s_per_step"))
        if given is not None:
            self.s_per_step = given
        elif self.first_step_at is None:
            self.first_step_at = (now, self.step)
        elif self.step > self.first_step_at[1]:
            t0, s0 = self.first_step_at
            self.s_per_step = (now - t0) / (self.step - s0)
        eta = _num(event.get("eta_s"))
        if eta is None and self.s_per_step is not None and self.total_steps:
            eta = max(0.0, (self.total_steps - self.step) * self.s_per_step)
        self.eta_s = eta


def _on_plan(p: Progress, ev: dict, now: float) -> None:
    plan = ev.get("plan") if isinstance(ev.get("plan"), dict) else ev
    p.plan = plan
    p.total_steps = int(_num(plan.get("total_steps")) or 0) or p.total_steps
    p.total_epochs = int(_num(plan.get("epochs")) or 0) or p.total_epochs


def _on_step(p: Progress, ev: dict, now: float) -> None:
    p.step = int(_num(ev.get("step")) or p.step)
    p.task = None  # steps have started: the preparation is over
    total = _num(ev.get("total_steps")) or _num(ev.get("max_steps"))
    if total:
        p.total_steps = int(total)
    p.epoch = int(_num(ev.get("epoch")) or p.epoch)
    epochs = _num(ev.get("num_epochs")) or _num(ev.get("total_epochs"))
    if epochs:
        p.total_epochs = int(epochs)
    p.loss = _num(ev.get("loss"))
    p.avg_loss = _num(ev.get("avg_loss")) or _num(ev.get("loss_average")) or p.avg_loss
    p.lr = _group_value(ev.get("lr"))
    p.d_lr = _group_value(ev.get("d_lr", ev.get("d*lr", ev.get("dlr"))))
    if p.loss is not None:
        p.losses.append((p.step, p.loss))
        if len(p.losses) > MAX_LOSS_POINTS:
            p.losses = p.losses[::2]
    p._timing(ev, now)


def _group_value(value: Any) -> float | None:
    """A number, or from a per-group dict the UNet's value (the one that matters most), else the first."""
    if isinstance(value, dict):
        return _num(value.get("unet", next(iter(value.values()), None)))
    return _num(value)


def _on_epoch(p: Progress, ev: dict, now: float) -> None:
    p.epoch = int(_num(ev.get("epoch")) or p.epoch)
    p.total_epochs = int(_num(ev.get("num_epochs")) or 0) or p.total_epochs
    p.avg_loss = _num(ev.get("avg_loss")) or _num(ev.get("loss")) or p.avg_loss


def _on_validation(p: Progress, ev: dict, now: float) -> None:
    value, step = _num(ev.get("val_loss")), _num(ev.get("step"))
    if value is not None:
        p.val_loss = value
        p.val_losses.append((int(step or p.step), value))


def _paths(ev: dict, *keys: str) -> list[str]:
    out: list[str] = []
    for key in keys:
        value = ev.get(key)
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(str(v) for v in value if isinstance(v, str))
    return out


def _on_sample(p: Progress, ev: dict, now: float) -> None:
    p.samples.extend(_paths(ev, "path", "paths", "images"))


def _on_save(p: Progress, ev: dict, now: float) -> None:
    p.saved.extend(_paths(ev, "path", "paths", "file"))


def _on_finish(p: Progress, ev: dict, now: float) -> None:
    p.finished = True
    p.task = None
    step = _num(ev.get("global_step")) or _num(ev.get("step"))
    if step:
        p.step = int(step)
    p.stopped = bool(ev.get("stopped"))
    if isinstance(ev.get("log_dir"), str):
        p.log_dir = ev["log_dir"]
    for path in _paths(ev, "files", "final_file", "path"):
        if path not in p.saved:
            p.saved.append(path)


def _on_log(p: Progress, ev: dict, now: float) -> None:
    """Log lines carry the epoch scores (`--evaluate_every_n_epochs`) as data besides their text."""
    rows = ev.get("scores")
    if isinstance(rows, list):
        seen = {(r.get("file"), r.get("weight")) for r in rows if isinstance(r, dict)}
        p.scores = [r for r in p.scores if (r.get("file"), r.get("weight")) not in seen]
        p.scores.extend(r for r in rows if isinstance(r, dict))
        if isinstance(ev.get("recommendation"), dict):
            p.recommendation = ev["recommendation"]


def _on_progress(p: Progress, ev: dict, now: float) -> None:
    """Counted work outside the steps (caching latents, text-encoder outputs): counts and an ETA."""
    done, total = _num(ev.get("done")), _num(ev.get("total"))
    if done is None or not total:
        return
    what = str(ev.get("what") or "working")
    task = p.task if p.task and p.task.get("what") == what and done >= p.task.get("done", 0) else \
        {"what": what, "started": now, "first": (now, done)}
    task.update(done=int(done), total=int(total))
    t0, d0 = task["first"]
    rate = (now - t0) / (done - d0) if done > d0 and now > t0 else None
    task["s_per_item"] = rate
    task["eta_s"] = max(0.0, (total - done) * rate) if rate is not None else None
    p.task = task


def _on_error(p: Progress, ev: dict, now: float) -> None:
    p.finished = True
    p.task = None
    p.error = str(ev.get("message") or ev.get("error") or "training failed")


_HANDLERS = {
    "plan": _on_plan, "on_plan": _on_plan,
    "step": _on_step, "on_step": _on_step,
    "epoch": _on_epoch, "on_epoch": _on_epoch,
    "sample": _on_sample, "on_sample": _on_sample,
    "validation": _on_validation, "on_validation": _on_validation,
    "save": _on_save, "on_save": _on_save,
    "finish": _on_finish, "on_finish": _on_finish,
    "error": _on_error, "on_error": _on_error,
    "log": _on_log, "on_log": _on_log,
    "progress": _on_progress, "on_progress": _on_progress,
}


class ProgressFile:
    """Reads the complete lines appended to a JSON-lines file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # a torn or foreign line must not stop the page
            if isinstance(obj, dict):
                events.append(obj)
        return events


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def task_line(task: dict | None) -> str:
    """'caching latents 3/8 · 0.40 s each · ETA 0:02' for a counted task."""
    if not task:
        return ""
    parts = [f"{task.get('what', 'working')} {task.get('done', 0)}/{task.get('total', '?')}"]
    if task.get("s_per_item") is not None:
        parts.append(f"{task['s_per_item']:.2f} s each")
    parts.append(f"ETA {format_eta(task.get('eta_s'))}")
    return " · ".join(parts)


def status_line(p: Progress, live: bool = True) -> str:
    """'step 12/40 · epoch 2/3 · loss 0.1234 · d·lr 3.1e-05 · 0.52 s/step · ETA 0:14' (no speed or ETA once ended)."""
    total = p.total_steps if p.total_steps else "?"
    epochs = f"/{p.total_epochs}" if p.total_epochs else ""
    parts = [f"step {p.step}/{total}", f"epoch {p.epoch}{epochs}"]
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4f}")
    if p.d_lr is not None:
        parts.append(f"d·lr {p.d_lr:.3g}")
    elif p.lr is not None:
        parts.append(f"lr {p.lr:.3g}")
    if not live:
        return " · ".join(parts)
    if p.s_per_step is not None:
        parts.append(f"{p.s_per_step:.2f} s/step")
    parts.append(f"ETA {format_eta(p.eta_s)}")
    return " · ".join(parts)
