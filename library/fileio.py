"""Atomic writes: a reader (or a crash) never sees a half-written file.

Everything lorasmith writes goes to a temp name in the destination folder and is
moved into place with `os.replace`, which is atomic on POSIX and Windows for
files on the same filesystem.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


# `.NAME.lorasmith-PID-XXXXXXXX.tmp` (mkstemp/mkdtemp) and `.NAME.lorasmith-PID-prev.old` (a folder moved aside)
_OWN_TEMP = re.compile(r"^\.(?P<dest>.+)\.lorasmith-(?P<pid>[0-9]+)-[a-z0-9_]+\.(?P<kind>tmp|old)$")


def own_temp_prefix(dest: str | os.PathLike[str]) -> str:
    """`.NAME.lorasmith-PID-`: every temp name we create beside `dest` starts so.

    The tag and the process id let a later run that takes over a dead run's lock
    recognise that run's leftovers without doubt, and touch nothing else.
    """
    return f".{Path(dest).name}.lorasmith-{os.getpid()}-"


def own_temp_of(name: str, pid: int) -> tuple[str, str] | None:
    """(destination name, 'tmp' or 'old') when `name` is a temp name process `pid` created with own_temp_prefix."""
    match = _OWN_TEMP.match(name)
    if match is None or int(match["pid"]) != pid or pid <= 0:
        return None
    return match["dest"], match["kind"]


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success it replaces `dest`.

    On any exception the temp file is removed and `dest` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=own_temp_prefix(dest), suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; give the file the permissions a plain open() would.
    os.chmod(tmp_path, 0o666 & ~_current_umask())
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(dest: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file beside `dest` for writing; it replaces `dest` on close."""
    if "r" in mode or "a" in mode or "+" in mode:
        raise ValueError(f"atomic_open is for writing only, got mode {mode!r}")
    with atomic_path(dest) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> None:
    with atomic_open(dest, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(dest, "wb") as fh:
        fh.write(data)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
