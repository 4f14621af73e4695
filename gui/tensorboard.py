"""TensorBoard for a run's logging folder, on a free local port, stopped with the GUI."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TensorBoard:
    """At most one TensorBoard process; starting for another folder replaces it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.process: subprocess.Popen | None = None
        self.logdir: Path | None = None
        self.port: int | None = None

    @property
    def url(self) -> str | None:
        return f"http://{self.host}:{self.port}/" if self.running() else None

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, logdir: str | os.PathLike[str]) -> str:
        """Start (or restart for a new folder) and return the URL."""
        logdir = Path(logdir)
        if self.running() and self.logdir == logdir:
            return self.url or ""
        self.stop()
        logdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        self.logdir = logdir
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", self.host,
             "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        return self.url or ""

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """True once the HTTP server answers (TensorBoard takes a few seconds to start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            try:
                with urllib.request.urlopen(self.url, timeout=1):
                    return True
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self.process = None
