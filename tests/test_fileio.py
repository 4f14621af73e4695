"""Atomic writes: the destination is either the old or the new file, never partial."""
from __future__ import annotations

import os
import stat

import pytest

from library.fileio import atomic_path, atomic_write_text


def test_replaces_and_uses_default_permissions(tmp_path):
    dest = tmp_path / "a.txt"
    atomic_write_text(dest, "one")
    atomic_write_text(dest, "two")
    assert dest.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failure_keeps_old_file_and_removes_temp(tmp_path):
    dest = tmp_path / "a.txt"
    atomic_write_text(dest, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
