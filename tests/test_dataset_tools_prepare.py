"""Folder preparation: the sd-scripts layout, copies not moves, refusals, idempotent re-runs."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dataset_tools.prepare import prepare_training_folders
from library.errors import DatasetError


def _photos(folder: Path, n: int, captions: bool = False) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(folder / f"p{i}.png")
        if captions:
            (folder / f"p{i}.txt").write_text(f"ohwx woman, photo {i}\n")


def test_layout_and_copies(tmp_path):
    train, reg, dest = tmp_path / "train", tmp_path / "reg", tmp_path / "project"
    _photos(train, 3, captions=True)
    _photos(reg, 5)
    (train / "notes.md").write_text("x")
    (train / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = prepare_training_folders("ohwx", "woman", train, dest, train_repeats=20, reg_images=reg,
                                      reg_repeats=1, progress=False)
    assert result.img_dir == dest / "img" / "20_ohwx woman"
    assert result.reg_dir == dest / "reg" / "1_woman"
    assert (dest / "log").is_dir() and (dest / "model").is_dir()
    assert sorted(p.name for p in result.img_dir.iterdir()) == [f"p{i}.{e}" for i in range(3) for e in ("png", "txt")]
    assert len(list(result.reg_dir.iterdir())) == 5
    assert (result.img_dir / "p1.txt").read_text() == "ohwx woman, photo 1\n"
    assert (train / "p0.png").is_file() and (reg / "p4.png").is_file()  # copied, not moved
    img_run = result.runs["img"]
    assert img_run.non_images == [train / "notes.md"]
    assert len(img_run.unreadable) == 1 and "broken.jpg" in img_run.unreadable[0]
    assert result.train_flags() == (f"--train_data_dir {dest / 'img'} --output_dir {dest / 'model'} "
                                    f"--logging_dir {dest / 'log'} --reg_data_dir {dest / 'reg'}")
    again = prepare_training_folders("ohwx", "woman", train, dest, train_repeats=20, reg_images=reg,
                                     progress=False)
    assert again.runs["img"].written == [] and len(again.runs["img"].skipped_existing) == 6


def test_refusals(tmp_path):
    train = tmp_path / "train"
    _photos(train, 1)
    with pytest.raises(DatasetError, match="overlap"):
        prepare_training_folders("ohwx", "woman", train, train / "out", progress=False)
    with pytest.raises(DatasetError, match="overlap"):
        prepare_training_folders("ohwx", "woman", train, tmp_path, progress=False)
    with pytest.raises(DatasetError) as err:
        prepare_training_folders("", "wo/man", train, tmp_path / "d", train_repeats=0, progress=False)
    assert len(err.value.problems) == 3
    assert not (tmp_path / "d").exists()
    # A different file already at the destination is never silently replaced.
    dest = tmp_path / "d2"
    prepare_training_folders("ohwx", "woman", train, dest, progress=False)
    target = dest / "img" / "40_ohwx woman" / "p0.png"
    target.write_bytes(b"user's own file")
    with pytest.raises(DatasetError, match="already exists"):
        prepare_training_folders("ohwx", "woman", train, dest, progress=False)
    prepare_training_folders("ohwx", "woman", train, dest, overwrite=True, progress=False)
    assert target.read_bytes() == (train / "p0.png").read_bytes()
