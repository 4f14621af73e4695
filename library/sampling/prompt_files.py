"""Files a prompt names (`<lora:NAME>`, `__NAME__`) are looked up inside one folder, never outside.

A prompt is text anyone with the GUI or a shared prompt file can type; a name
like `../../secret` or `/etc/x` must not read a file outside the folder the user
chose (`--lora_dir`, `--wildcards_dir`, checked against the GUI's `--allow`).
The real path (symlinks followed) has to lie inside the folder's real path, and
"does not exist" and "not allowed" give the same answer, so a prompt cannot be
used to find out which files exist elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path


def file_in_folder(folder: str | os.PathLike[str], name: str, suffix: str) -> Path | None:
    """`folder/NAME` (or `folder/NAME+suffix`) when that is a file inside `folder`; None for anything else."""
    if not name or "\x00" in name:
        return None
    try:
        root = Path(folder).resolve()
        for candidate in [name + suffix] + ([name] if name.endswith(suffix) else []):
            rel = Path(candidate)
            if rel.is_absolute() or rel.drive:
                return None
            real = (root / rel).resolve()
            if real != root and real.is_relative_to(root) and real.is_file():
                return real
    except (OSError, ValueError, RuntimeError):  # a name too long, a symlink loop: not a usable file either way
        return None
    return None


def names_in_folder(folder: str | os.PathLike[str], suffix: str, limit: int = 30) -> str:
    """The first `limit` names (relative, without suffix) a prompt can use from `folder`, for error messages."""
    root = Path(folder)
    if not root.is_dir():
        return "none"
    names = (p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{suffix}"))
    found = sorted(n for n in names if file_in_folder(root, n, suffix) is not None)  # no links pointing out
    return ", ".join(found[:limit]) or "none"
