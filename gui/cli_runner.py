"""Run a `lorasmith` subcommand in a child process and collect its output.

Tools that load a model (grids, generated regularization sets) run this way, so
their memory and any crash stay out of the GUI process; the command is exactly
what a user could type.
"""
from __future__ import annotations

import html
import os
import re
import signal
import subprocess
import sys
import threading
import time

from library.errors import LorasmithError

DEFAULT_TIMEOUT_S = 3600


def lorasmith_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "library.cli", *args]


def clean_output(text: str) -> list[str]:
    """Lines of a command's output with tqdm's carriage-return redraws collapsed."""
    lines = []
    for line in text.split("\n"):  # not splitlines(): it also splits on the \r we collapse
        parts = [p for p in line.split("\r") if p.strip()]
        if parts:
            lines.append(parts[-1].rstrip())
    return lines


def run_lorasmith(args: list[str], timeout: float = DEFAULT_TIMEOUT_S) -> tuple[list[str], list[str]]:
    """(stdout lines, stderr lines) of a successful run; LorasmithError with the last lines when it fails.

    Kept apart because results are printed on stdout while progress bars go to stderr.
    """
    try:
        proc = subprocess.run(lorasmith_argv(*args), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LorasmithError(f"`lorasmith {args[0]}` took longer than {timeout:.0f} s and was stopped") from None
    out, err = clean_output(proc.stdout), clean_output(proc.stderr)
    if proc.returncode != 0:
        raise LorasmithError(f"`lorasmith {' '.join(args[:2])}` failed (exit code {proc.returncode})", (out + err)[-12:])
    return out, err


# --- following a long command: counts and ETA from its tqdm bar -----------------------------------------
_TQDM = re.compile(r"^\s*(?P<desc>[^|]*?):?\s*(?:\d+%)?\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
                   r"\[(?P<elapsed>[\d:]+)(?:<(?P<remain>[\d:?]+))?")


def _seconds(text: str | None) -> float | None:
    if not text or "?" in text:
        return None
    total = 0.0
    for part in text.split(":"):
        total = total * 60 + float(part)
    return total


def parse_tqdm(line: str) -> dict | None:
    """{'what', 'done', 'total', 'elapsed_s', 'eta_s'} from one tqdm redraw ('grid:  50%|##  | 2/4 [00:01<00:01, …]')."""
    m = _TQDM.match(line)
    if m is None:
        return None
    return {"what": m["desc"].strip() or "working", "done": int(m["n"]), "total": int(m["total"]),
            "elapsed_s": _seconds(m["elapsed"]), "eta_s": _seconds(m["remain"])}


class CliTask:
    """A `lorasmith` subcommand running in a child process, its progress read from its tqdm bar as it goes.

    `task` is the latest count ({'what', 'done', 'total', 'eta_s', ...}); `finish()` returns
    (stdout lines, stderr lines) like `run_lorasmith`, or raises LorasmithError.
    """

    def __init__(self, args: list[str], timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.args = list(args)
        self.timeout = timeout
        self.started = time.monotonic()
        self.task: dict | None = None
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self.proc = subprocess.Popen(lorasmith_argv(*self.args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self._out, False), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self._err, True), daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self, stream, sink: list[bytes], bars: bool) -> None:
        piece = b""
        while True:
            chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
            if not chunk:
                break
            sink.append(chunk)
            if bars:
                piece = (piece + chunk)[-4096:]
                for seg in reversed(re.split(rb"[\r\n]", piece)):
                    found = parse_tqdm(seg.decode("utf-8", "replace"))
                    if found is not None:
                        self.task = found
                        break

    @property
    def running(self) -> bool:
        if self.proc.poll() is None and time.monotonic() - self.started > self.timeout:
            self.stop()
        return self.proc.poll() is None

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def finish(self) -> tuple[list[str], list[str]]:
        timed_out = False
        try:
            self.proc.wait(max(1.0, self.timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.stop()
            self.proc.wait()
        for t in self._threads:
            t.join(5)
        if timed_out or time.monotonic() - self.started > self.timeout:
            raise LorasmithError(f"`lorasmith {self.args[0]}` took longer than {self.timeout:.0f} s and was stopped")
        out = clean_output(b"".join(self._out).decode("utf-8", "replace"))
        err = clean_output(b"".join(self._err).decode("utf-8", "replace"))
        if self.proc.returncode != 0:
            raise LorasmithError(f"`lorasmith {' '.join(self.args[:2])}` failed (exit code {self.proc.returncode})",
                                 (out + err)[-12:])
        return out, err


def task_html(task: dict | None, elem_id: str, started: float | None = None, idle: str = "starting…") -> str:
    """A small bar with 'what done/total · ETA m:ss' and data attributes the browser tests read."""
    from gui.progress import format_eta

    if not task:
        waited = f" ({time.monotonic() - started:.0f} s)" if started is not None else ""
        return f'<div id="{elem_id}" class="ls-task" data-done="0" data-total="0">{html.escape(idle)}{waited}</div>'
    pct = 100.0 * task["done"] / max(1, task["total"])
    return (f'<div id="{elem_id}" class="ls-task" data-done="{task["done"]}" data-total="{task["total"]}">'
            f'<div style="background:#ddd;border-radius:4px;height:10px;overflow:hidden">'
            f'<div style="width:{pct:.1f}%;background:#2e86c1;height:10px"></div></div>'
            f'{html.escape(task["what"])} {task["done"]}/{task["total"]} · ETA {format_eta(task.get("eta_s"))}</div>')


class ThreadTask:
    """An in-process tool (e.g. crop_folder) in a worker thread, counting through its `progress(done, total)`.

    `task` mirrors CliTask's, with an ETA from the rate so far; `result()` returns the
    function's value or raises what it raised.
    """

    def __init__(self, what: str, fn, *args, **kwargs) -> None:
        self.what = what
        self.started = time.monotonic()
        self.task: dict | None = None
        self._first: tuple[float, int] | None = None
        self._value = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self._thread.start()

    def report(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        t0, d0 = self._first
        rate = (now - t0) / (done - d0) if done > d0 else None
        self.task = {"what": self.what, "done": done, "total": total,
                     "eta_s": max(0.0, (total - done) * rate) if rate is not None else None}

    def _run(self, fn, args, kwargs) -> None:
        try:
            self._value = fn(*args, progress=self.report, **kwargs)
        except BaseException as exc:  # noqa: BLE001 (handed to the caller in result())
            self._error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value
