"""Ctrl-C / SIGTERM for a CLI training: the first finishes the step and saves, the second stops at once.

The first signal only sets the `stop` command: the trainer ends after the
current optimizer step, writes `<output_name>-interrupted.<ext>` and the
`<output_name>-state/` folder, and the CLI exits 130. A second signal raises
KeyboardInterrupt wherever the process is; every file is written through
library.fileio's atomic paths (and state folders through a temp folder), so an
interrupted write leaves the previous version, never a truncated file.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from library.training.events import Commands

SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


class SignalStop:
    """The handler: counts signals, asks for a graceful stop first, interrupts on the second."""

    def __init__(self, commands: Commands) -> None:
        self.commands = commands
        self.count = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            self.commands.request("stop")
            print(f"\n{name}: stopping after this step and saving (send it again to stop at once)",
                  file=sys.stderr, flush=True)
            return
        print(f"\n{name} again: stopping now", file=sys.stderr, flush=True)
        raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_signals(commands: Commands) -> Iterator[SignalStop | None]:
    """Install the handler for SIGINT/SIGTERM while training (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    handler = SignalStop(commands)
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield handler
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
