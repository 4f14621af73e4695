"""How the trainer talks to whoever runs it: an events object out, a command object in.

The trainer never prints or draws; it calls `Events` methods (the CLI turns them
into a tqdm bar and log lines, `JsonLinesEvents` writes them for the GUI) and
polls a `Commands` object once per step (stop, save now, sample now). Every
event is a plain dict, so all sinks see the same numbers.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class Events:
    """No-op base: override the events you care about."""

    def on_plan(self, info: dict[str, Any]) -> None: ...
    def on_step(self, info: dict[str, Any]) -> None: ...
    def on_epoch(self, info: dict[str, Any]) -> None: ...
    def on_sample(self, info: dict[str, Any]) -> None: ...
    def on_save(self, info: dict[str, Any]) -> None: ...
    def on_finish(self, info: dict[str, Any]) -> None: ...
    def on_error(self, info: dict[str, Any]) -> None: ...
    def on_log(self, info: dict[str, Any]) -> None: ...
    def on_validation(self, info: dict[str, Any]) -> None: ...  # {"kind": "step"|"epoch", "step", "epoch", "val_loss", ...}
    def on_progress(self, info: dict[str, Any]) -> None: ...  # {"what": "caching latents", "done", "total"}


EVENT_NAMES = ("plan", "step", "epoch", "sample", "save", "finish", "error", "log", "validation", "progress")


class MultiEvents(Events):
    """Sends every event to several sinks in order."""

    def __init__(self, *sinks: Events | None) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_") and name[3:] in EVENT_NAMES:
            sinks = object.__getattribute__(self, "sinks")

            def fan_out(info: dict[str, Any]) -> None:
                for sink in sinks:
                    getattr(sink, name)(info)

            return fan_out
        return object.__getattribute__(self, name)


class RecordingEvents(Events):
    """Keeps every event as (name, info): for tests and for callers that poll."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_") and name[3:] in EVENT_NAMES:
            events = object.__getattribute__(self, "events")
            return lambda info: events.append((name[3:], dict(info)))
        return object.__getattribute__(self, name)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [info for name, info in self.events if name == kind]


class JsonLinesEvents(Events):
    """Writes each event as one JSON line `{"event": name, "time": t, ...}` and flushes it.

    The GUI tails this file; a line is either complete or not yet written, so a
    reader never sees half an event.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", encoding="utf-8")  # one run per file: readers never see an older run
        self._lock = threading.Lock()

    def _write(self, name: str, info: dict[str, Any]) -> None:
        line = json.dumps({"event": name, "time": time.time(), **info}, default=str, ensure_ascii=False)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_") and name[3:] in EVENT_NAMES:
            write = object.__getattribute__(self, "_write")
            return lambda info: write(name[3:], info)
        return object.__getattribute__(self, name)

    def close(self) -> None:
        with self._lock:
            self._fh.close()


class Commands:
    """Requests from outside (GUI button, signal handler), read by the trainer between steps.

    Setting a flag is thread-safe; the trainer clears `save_now`/`sample_now`
    once it has acted on them. `stop` ends the run after the current step and
    saves what was trained so far.
    """

    def __init__(self) -> None:
        # Re-entrant: a signal handler runs in the main thread and may interrupt `take` while it holds the lock.
        self._lock = threading.RLock()
        self.stop = False
        self.save_now = False
        self.sample_now = False

    def request(self, name: str) -> None:
        if name not in ("stop", "save_now", "sample_now"):
            raise ValueError(f"unknown command {name!r}")
        with self._lock:
            setattr(self, name, True)

    def take(self, name: str) -> bool:
        """True once per request: reads and clears a flag."""
        with self._lock:
            value = bool(getattr(self, name))
            if name != "stop":
                setattr(self, name, False)
            return value
