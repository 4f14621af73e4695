"""One training per output folder: `<output_dir>/.lorasmith-train.lock` names the running process.

Two runs writing the same `<output_name>-000001.safetensors` and state folders
would overwrite each other's files in an unpredictable mix. The lock is created
with O_EXCL (atomic); a lock whose process no longer exists (a crash, kill -9)
is stale and taken over with a note.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from library.errors import TrainingError
from library.fileio import own_temp_of

LOCK_NAME = ".lorasmith-train.lock"


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists (signal 0 probes without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(info))
    return True


def _live_holder(held: dict) -> int:
    """The pid of another process that holds the lock and still runs (0: free or stale)."""
    pid = int(held.get("pid", 0)) if str(held.get("pid", "")).isdigit() else 0
    same_host = held.get("host") in (None, socket.gethostname())
    return pid if pid and pid != os.getpid() and (pid_alive(pid) or not same_host) else 0


def in_use_message(output_dir: str | os.PathLike[str], held: dict) -> str:
    """What the trainer says when another run holds `output_dir` (the GUI shows the same words)."""
    return (f"{output_dir} is in use by another training (process {held.get('pid')} on {held.get('host')}, "
            f"started {held.get('started')})")


def lock_problem(output_dir: str | os.PathLike[str]) -> str | None:
    """Read-only probe: `in_use_message` when a live run holds the folder, else None (nothing is created)."""
    path = Path(output_dir) / LOCK_NAME
    if not path.is_file():
        return None
    held = _read(path)
    return in_use_message(output_dir, held) if _live_holder(held) else None


def acquire(output_dir: Path) -> tuple[Path, list[str]]:
    """Take the lock (returns its path and notes) or raise TrainingError naming the running process."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    notes: list[str] = []
    for _ in range(3):
        if _create(path):
            return path, notes
        held = _read(path)
        if _live_holder(held):
            raise TrainingError(in_use_message(output_dir, held), [
                f"lock file: {path}",
                "wait for that training to finish, stop it, or choose another --output_dir",
                "if no training is running there, delete the lock file"])
        pid = int(held.get("pid", 0)) if str(held.get("pid", "")).isdigit() else 0  # the dead holder
        notes.append(f"took over a stale lock {path} (process {pid or '?'} is gone)")
        notes += remove_stale_temps(output_dir, pid)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    raise TrainingError(f"cannot take the lock {path}", ["another process keeps creating it; choose another --output_dir"])


def remove_stale_temps(output_dir: Path, pid: int) -> list[str]:
    """Clean up what dead process `pid` left half-written; returns one note per name touched.

    Only names `fileio.own_temp_prefix` gave to that very process are considered
    (`.NAME.lorasmith-PID-XXXXXXXX.tmp`, `.NAME.lorasmith-PID-prev.old`): a user's
    `.tmp`, `.zshrc.old` or `.tmpfoo` never match. A matching folder (a state being
    written) is emptied and removed only when it holds plain files and nothing else;
    a state moved aside whose replacement never arrived is put back instead.
    """
    notes = []
    for entry in sorted(output_dir.iterdir()):
        own = own_temp_of(entry.name, pid)
        if own is None or entry.is_symlink():
            continue
        dest, kind = own
        if entry.is_file():
            entry.unlink(missing_ok=True)
            notes.append(f"removed {entry.name}, left half-written by that process")
        elif kind == "old" and not (output_dir / dest).exists():
            os.replace(entry, output_dir / dest)
            notes.append(f"restored {dest} from {entry.name}, moved aside by that process")
        elif entry.is_dir() and _remove_flat_folder(entry):
            notes.append(f"removed {entry.name}, left half-written by that process")
        else:
            notes.append(f"left {entry.name}: it holds more than the files lorasmith writes there")
    return notes


def _remove_flat_folder(folder: Path) -> bool:
    """Delete a folder that holds only plain files (what our state writer puts there); False if it holds more."""
    children = list(folder.iterdir())
    if any(child.is_symlink() or not child.is_file() for child in children):
        return False
    for child in children:
        child.unlink(missing_ok=True)
    folder.rmdir()
    return True


def release(path: Path) -> None:
    """Remove the lock if it is still ours."""
    if _read(path).get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def output_lock(output_dir: str | os.PathLike[str]) -> Iterator[list[str]]:
    """Hold the output folder's lock for the duration; yields notes (stale lock taken over)."""
    path, notes = acquire(Path(output_dir))
    try:
        yield notes
    finally:
        release(path)
