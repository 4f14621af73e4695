"""Training runs as subprocesses, one after another.

Training runs in its own process (the same `lorasmith train` CLI a user would
type), so a crash or an out-of-memory kill never takes the page down.  The
state lives here in the server process, so a reloaded page reattaches to the
running job by polling.  Stop sends SIGINT (the trainer finishes the step,
saves state and a LoRA, and exits); a second Stop kills the process group.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gui.progress import Progress, ProgressFile
from library.config import TrainConfig
from library.config_io import write_config

QUEUED, RUNNING, STOPPING, FINISHED, FAILED, STOPPED, CANCELLED = (
    "queued", "running", "stopping", "finished", "failed", "stopped", "cancelled")
DONE_STATES = (FINISHED, FAILED, STOPPED, CANCELLED)
LOG_TAIL_LINES = 40


def train_command(config_path: Path, progress_path: Path) -> list[str]:
    """The CLI the GUI runs: exactly what a user could paste into a terminal."""
    return [sys.executable, "-m", "library.cli", "train", "--config_file", str(config_path),
            "--progress_file", str(progress_path)]


def sweep_command(config_path: Path, args: list[str]) -> list[str]:
    """`lorasmith sweep` on the form's config: every variant trains one after another, then they are ranked."""
    return [sys.executable, "-m", "library.cli", "sweep", "--config_file", str(config_path), *args]


SWEEP_ARGS_FILE = "sweep-args.json"  # marks a sweep's job folder (the history reads it)


@dataclass
class Job:
    """One queued or running training run and where its files are."""

    id: int
    name: str
    config: TrainConfig
    folder: Path
    state: str = QUEUED
    progress: Progress = field(default_factory=Progress)
    returncode: int | None = None
    stop_requests: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)
    reader: ProgressFile | None = field(default=None, repr=False)
    kind: str = "train"  # or "sweep"
    args: list[str] = field(default_factory=list)  # a sweep's --vary … arguments

    @property
    def config_path(self) -> Path:
        return self.folder / "config.toml"

    @property
    def progress_path(self) -> Path:
        return self.folder / "progress.jsonl"

    @property
    def log_path(self) -> Path:
        return self.folder / "train.log"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                text = fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        # tqdm redraws its bar with carriage returns: keep only the last state of each line.
        shown = ([seg for seg in line.split("\r") if seg.strip()][-1:] for line in text.split("\n"))
        tail = deque((seg[0].rstrip() for seg in shown if seg), maxlen=lines)
        return "\n".join(tail)


class JobManager:
    """A FIFO queue of training configs; at most one runs at a time."""

    def __init__(self, jobs_dir: str | os.PathLike[str],
                 command: Callable[[Path, Path], list[str]] = train_command,
                 poll_interval: float | None = 0.5,
                 sweep: Callable[[Path, list[str]], list[str]] = sweep_command) -> None:
        self.jobs_dir = Path(jobs_dir)
        self.command = command
        self.sweep_command = sweep
        self.jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._thread = None
        if poll_interval:
            self._thread = threading.Thread(target=self._loop, args=(poll_interval,), daemon=True, name="lorasmith-jobs")
            self._thread.start()

    # --- queue ------------------------------------------------------------------
    def submit(self, cfg: TrainConfig, name: str | None = None, kind: str = "train",
               args: list[str] | None = None) -> Job:
        """Queue a config (kind "train"), or a sweep over it with `args` (kind "sweep"); it starts when nothing runs."""
        with self._lock:
            job_id = next(self._ids)
            folder = self.jobs_dir / f"job-{int(time.time())}-{job_id:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            cfg = dataclasses.replace(cfg, progress_file=None)
            job = Job(job_id, name or cfg.output_name or f"job {job_id}", cfg, folder, kind=kind, args=list(args or []))
            write_config(cfg, job.config_path)
            if kind == "sweep":
                import json

                (folder / SWEEP_ARGS_FILE).write_text(json.dumps(job.args), encoding="utf-8")
            self.jobs.append(job)
            self.poll()
            return job

    def cancel(self, job_id: int) -> bool:
        """Drop a job that has not started yet."""
        with self._lock:
            job = self.get(job_id)
            if job is None or job.state != QUEUED:
                return False
            job.state = CANCELLED
            return True

    def get(self, job_id: int) -> Job | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    def current(self) -> Job | None:
        """The running job, else the most recent one (so a reloaded page shows the last run)."""
        with self._lock:
            active = [j for j in self.jobs if j.state in (RUNNING, STOPPING)]
            if active:
                return active[0]
            started = [j for j in self.jobs if j.state != QUEUED and j.state != CANCELLED]
            return started[-1] if started else None

    def queued(self) -> list[Job]:
        return [j for j in self.jobs if j.state == QUEUED]

    # --- process control -----------------------------------------------------------
    def stop(self, job_id: int | None = None) -> str:
        """First call: SIGINT (graceful stop and save). Second call: SIGKILL of the process group."""
        with self._lock:
            job = self.get(job_id) if job_id is not None else self.current()
            if job is None or job.process is None or job.state not in (RUNNING, STOPPING):
                return "nothing is running"
            return escalate_stop(job, "stopping: the trainer finishes this step, saves the state and a LoRA, "
                                      "then exits (click again to kill)")

    def poll(self) -> None:
        """Read new progress events, notice finished processes, start the next queued job."""
        with self._lock:
            for job in self.jobs:
                if job.state in (RUNNING, STOPPING):
                    self._update(job)
            if not any(j.state in (RUNNING, STOPPING) for j in self.jobs):
                nxt = next((j for j in self.jobs if j.state == QUEUED), None)
                if nxt is not None:
                    self._start(nxt)

    def _start(self, job: Job) -> None:
        job.reader = ProgressFile(job.progress_path)
        job.progress = Progress()
        with open(job.log_path, "ab") as log:
            argv = (self.sweep_command(job.config_path, job.args) if job.kind == "sweep"
                    else self.command(job.config_path, job.progress_path))
            job.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=job.folder, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        job.state = RUNNING

    def _update(self, job: Job) -> None:
        for event in job.reader.read_new() if job.reader else []:
            job.progress.apply(event)
        if job.kind == "sweep":  # a sweep reports on its log: which variant, and that variant's step bar
            from gui.sweep_view import sweep_task

            job.progress.task = sweep_task(job.log_tail(400)) or job.progress.task
        code = job.process.poll() if job.process else None
        if code is None:
            return
        for event in job.reader.read_new() if job.reader else []:
            job.progress.apply(event)
        job.returncode = code
        if job.stop_requests:
            job.state = STOPPED
        elif code == 0 and job.progress.error is None:
            job.state = FINISHED
            job.progress.finished = True
        else:
            job.state = FAILED
            if job.progress.error is None:
                job.progress.error = f"the trainer exited with code {code}; see the log"

    def _loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            self.poll()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the poller and the running job (SIGINT, then SIGKILL after `timeout`)."""
        self._closed.set()
        with self._lock:
            for job in self.jobs:
                if job.state == QUEUED:
                    job.state = CANCELLED
                if job.process is not None and job.process.poll() is None:
                    job.stop_requests += 1
                    send_signal(job.process, signal.SIGINT, group=False)
                    try:
                        job.process.wait(timeout)
                    except subprocess.TimeoutExpired:
                        send_signal(job.process, signal.SIGKILL, group=True)
                        job.process.wait()
                    self._update(job)


def send_signal(process: subprocess.Popen, sig: int, group: bool) -> None:
    """Signal a child (or its whole process group); one that already exited is left alone."""
    try:
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
    except ProcessLookupError:
        pass


def escalate_stop(job: Any, stopping_message: str) -> str:
    """A child process's Stop button: the first press asks it to finish gracefully (SIGINT: the
    trainer saves, the sampler finishes its image); a second press kills its process group."""
    job.stop_requests += 1
    if job.stop_requests == 1:
        send_signal(job.process, signal.SIGINT, group=False)
        job.state = STOPPING
        return stopping_message
    send_signal(job.process, signal.SIGKILL, group=True)
    return "killed"

