"""Atomic writes: a reader (or a crash) never sees a half-written file.

Everything lorasmith writes goes to a temp name in the destination folder and is
moved into place with `os.replace`, which is atomic on POSIX and Windows for
files on the same filesystem.
"""
from __future__ import annotations

import contextlib
import os
import shutil
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

    The temp file lives alone in a private hidden folder (`.NAME.lorasmith-PID-XXXX.tmp/NAME`)
    because writers we call may make temp files of their own next to the path they
    are given: safetensors >= 0.8 writes `.tmpXXXXXX` and renames it, and a kill in
    between would otherwise litter the user's folder with a name nobody can
    attribute. On any exception the folder is removed and `dest` is left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=own_temp_prefix(dest), suffix=".tmp", dir=dest.parent))
    tmp_path = folder / dest.name
    try:
        # an empty file with the permissions a plain open() would give (callers may only append to it)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        yield tmp_path
        apply_user_mode(tmp_path)
        _fsync_file(tmp_path)
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (sizes in messages)."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Free space for unprivileged writers on the filesystem holding `path` (its nearest existing folder)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


# How torch.save's C++ writer reports a failed write (seen on a full tmpfs: the first two).
TORCH_WRITE_FAILURES = ("unexpected pos", "basic_ios::clear", "PytorchStreamWriter failed", "file write failed")


def write_failure_reason(exc: BaseException, path: str | os.PathLike[str]) -> str | None:
    """Why a write of `path` failed, when `exc` is a failed write; None when `exc` is something else.

    A full disk does not always arrive as OSError: safetensors raises SafetensorError
    ('I/O error: No space left on device (os error 28)') and torch.save a RuntimeError
    ('[enforce fail at inline_container.cc] unexpected pos 576 vs 534').
    """
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc)
    if type(exc).__name__ == "SafetensorError" and "I/O error" in text:
        return text.split("I/O error: ", 1)[-1]
    if isinstance(exc, RuntimeError) and any(m in text for m in TORCH_WRITE_FAILURES):
        free = free_bytes(Path(path).parent)
        if free is not None and free < 1024 * 1024:
            return f"No space left on device ({human_bytes(free)} free)"
        return f"the file could not be written completely ({text[:120]})"
    return None
def apply_user_mode(path: str | os.PathLike[str]) -> None:
    """Give `path`, and for a folder everything in it, the mode a plain open()/mkdir() gives:
    0o666 (files) or 0o777 (folders) less the umask.

    Called on every file and folder we write just before it is moved into place. Why: mkstemp and
    safetensors' writer create files 0600 and mkdtemp folders 0700, so a webui running as another
    user could not read a LoRA we wrote.
    """
    mask = _current_umask()
    root = Path(path)
    for p in (root, *sorted(root.rglob("*"))) if root.is_dir() else (root,):
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def _current_umask() -> int:
    """The process umask; read from /proc where it can be, since setting it to ask (os.umask) briefly
    changes it for every thread of the process."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
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
