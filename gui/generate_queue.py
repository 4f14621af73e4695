"""The Generate tab's queue: `lorasmith sample` runs, one at a time, in child processes.

Each Generate click queues the same command a user could type, so a model load
that runs out of memory or crashes never takes the page down.  A generation
waits while a training job runs (both want the whole GPU).  The images a run
has saved are read from the lines `lorasmith sample` prints ("PATH  (seed N)"),
and its progress from the last tqdm count in its log.
"""
from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gui.cli_runner import clean_output, lorasmith_argv
from gui.jobs import escalate_stop, send_signal

QUEUED, RUNNING, STOPPING, FINISHED, FAILED, STOPPED, CANCELLED = (
    "queued", "running", "stopping", "finished", "failed", "stopped", "cancelled")
ACTIVE = (RUNNING, STOPPING)
_SAVED = re.compile(r"^(.+\.png)  \(seed (-?\d+)\)$")
_COUNT = re.compile(r"(\d+)/(\d+) \[")


@dataclass
class GenerationJob:
    """One queued `lorasmith sample` command and its log."""

    id: int
    argv: list[str]  # the arguments after `lorasmith`
    folder: Path
    state: str = QUEUED
    returncode: int | None = None
    stop_requests: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.folder / "sample.log"

    def log_lines(self) -> list[str]:
        try:
            text = self.log_path.read_bytes()[-256 * 1024:].decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        return clean_output(text)

    def images(self) -> list[Path]:
        """The PNGs this run has written so far, in the order it wrote them."""
        return [Path(m.group(1)) for line in self.log_lines() if (m := _SAVED.match(line))]

    def step_count(self) -> tuple[int, int] | None:
        """(done, total) sampler steps from the last progress-bar line, None before the first."""
        text = "\n".join(self.log_lines()[-5:])
        counts = _COUNT.findall(text)
        return (int(counts[-1][0]), int(counts[-1][1])) if counts else None

    def error_lines(self, count: int = 12) -> list[str]:
        return [ln for ln in self.log_lines() if not _COUNT.search(ln)][-count:]


class GenerationQueue:
    """FIFO of sample commands; at most one runs, and none while `busy()` (a training run) says so."""

    def __init__(self, jobs_dir: str | os.PathLike[str], busy: Callable[[], bool] = lambda: False,
                 poll_interval: float | None = 0.5) -> None:
        self.jobs_dir = Path(jobs_dir)
        self.busy = busy
        self.jobs: list[GenerationJob] = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._closed = threading.Event()
        if poll_interval:
            threading.Thread(target=self._loop, args=(poll_interval,), daemon=True, name="lorasmith-generate").start()

    def submit(self, argv: list[str]) -> GenerationJob:
        with self._lock:
            job_id = next(self._ids)
            folder = self.jobs_dir / f"generate-{int(time.time())}-{job_id:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            job = GenerationJob(job_id, list(argv), folder)
            self.jobs.append(job)
            self.poll()
            return job

    def queued(self) -> list[GenerationJob]:
        return [j for j in self.jobs if j.state == QUEUED]

    def running(self) -> GenerationJob | None:
        return next((j for j in self.jobs if j.state in ACTIVE), None)

    def cancel_queued(self) -> int:
        with self._lock:
            waiting = self.queued()
            for job in waiting:
                job.state = CANCELLED
            return len(waiting)

    def stop(self) -> str:
        """First call: SIGINT to the running sample; second call: kill its process group."""
        with self._lock:
            job = self.running()
            if job is None or job.process is None:
                return "nothing is generating"
            return escalate_stop(job, "stopping")

    def poll(self) -> None:
        with self._lock:
            for job in self.jobs:
                if job.state in ACTIVE and job.process is not None and (code := job.process.poll()) is not None:
                    job.returncode = code
                    job.state = STOPPED if job.stop_requests else (FINISHED if code == 0 else FAILED)
            if self.running() is None and not self.busy():
                nxt = next(iter(self.queued()), None)
                if nxt is not None:
                    self._start(nxt)

    def _start(self, job: GenerationJob) -> None:
        with open(job.log_path, "ab") as log:
            job.process = subprocess.Popen(
                lorasmith_argv(*job.argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=job.folder, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        job.state = RUNNING

    def _loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            self.poll()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Nothing keeps generating after the GUI exits: queued runs are dropped, the running one stopped."""
        self._closed.set()
        with self._lock:
            self.cancel_queued()
            job = self.running()
            if job is not None and job.process is not None and job.process.poll() is None:
                send_signal(job.process, signal.SIGINT, group=False)
                try:
                    job.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    send_signal(job.process, signal.SIGKILL, group=True)
                    job.process.wait()
            self.poll()
