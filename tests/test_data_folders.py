"""The one folder scan: order, captions, and every bad input reported together."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from PIL import Image

from library.data.folders import list_images, parse_folder_name, scan_datasets, subsets_from_dirs
from library.data.prepare import prepare_data
from library.data.specs import SubsetSpec
from library.errors import ConfigError, DatasetError


def img(path: Path, size=(64, 64), color=(200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


class Cfg:
    """A stand-in config object: the data layer only reads attributes by sd-scripts name."""

    def __init__(self, **kw):
        self.__dict__.update({"resolution": "64", "caption_extension": ".txt", "train_batch_size": 1}, **kw)


def test_parse_folder_name() -> None:
    assert parse_folder_name("10_ohwx woman") == (10, "ohwx woman")
    assert parse_folder_name("1_a_b") == (1, "a_b")
    assert parse_folder_name("10") == (10, "")
    assert parse_folder_name("ten_ohwx") is None


def test_images_sorted_case_insensitive_extensions(tmp_path: Path) -> None:
    folder = tmp_path / "5_x"
    for name in ["b.PNG", "a.jpg", "c.webp", "B.bmp", "notes.txt", ".hidden.png", "d.jpeg"]:
        if name.endswith(".txt"):
            (folder / name).write_text("x")
        else:
            img(folder / name)
    assert [p.name for p in list_images(folder)] == ["B.bmp", "a.jpg", "b.PNG", "c.webp", "d.jpeg"]


def test_captions_from_file_or_class_tokens(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "3_ohwx man"
    img(folder / "a.png")
    img(folder / "b.png")
    (folder / "a.txt").write_text("ohwx man, beard\nignored second line", encoding="utf-8")
    prepared = prepare_data(Cfg(train_data_dir=tmp_path / "train"))
    images = prepared.description.datasets[0].subsets[0].images
    assert [(i.path.name, i.caption, i.caption_source) for i in images] == [
        ("a.png", "ohwx man, beard", "file"), ("b.png", "ohwx man", "class_tokens")]
    assert prepared.description.datasets[0].subsets[0].spec.num_repeats == 3


def make_bad_dataset(root: Path) -> Path:
    train = root / "train"
    img(train / "10_ohwx" / "good.png")
    img(train / "10_ohwx" / "good2.png")
    (train / "10_ohwx" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    img(train / "10_ohwx" / "latin1.png")
    (train / "10_ohwx" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    img(train / "10_ohwx" / "blank.png")
    (train / "10_ohwx" / "blank.txt").write_bytes(b"")
    (train / "5_empty").mkdir(parents=True)
    img(train / "ten_ohwx" / "x.png")
    img(train / "0_zero" / "x.png")
    return train


def test_every_bad_input_in_one_error(tmp_path: Path) -> None:
    train = make_bad_dataset(tmp_path)
    with pytest.raises(DatasetError) as info:
        prepare_data(Cfg(train_data_dir=train))
    text = str(info.value)
    assert len(info.value.problems) == 6
    assert "broken.png: cannot read image" in text
    assert "latin1.txt: caption is not UTF-8" in text
    assert "blank.txt: caption file is empty" in text
    assert "5_empty: folder has no images" in text
    assert "ten_ohwx: folder name has no repeat count" in text and "'10_ohwx'" in text
    assert "0_zero: repeat count 0" in text
    assert "--skip_bad_images" in info.value.summary


def test_skip_bad_images_trains_on_the_rest_and_lists_skips(tmp_path: Path) -> None:
    train = make_bad_dataset(tmp_path)
    prepared = prepare_data(Cfg(train_data_dir=train, skip_bad_images=True))
    subsets = prepared.description.subsets()
    assert [s.spec.name for s in subsets] == ["10_ohwx"]
    assert [i.path.name for i in subsets[0].images] == ["good.png", "good2.png"]
    assert len(prepared.plan.skipped) == 6
    assert prepared.plan.items_per_epoch == 20


def test_truncated_jpeg_is_found(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "1_x"
    good = img(folder / "a.jpg", (256, 256))
    data = good.read_bytes()
    (folder / "b.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="b.jpg: cannot read image"):
        prepare_data(Cfg(train_data_dir=tmp_path / "train"))


def test_missing_train_dir_and_no_images(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a folder"):
        prepare_data(Cfg(train_data_dir=tmp_path / "nope"))
    with pytest.raises(ConfigError, match="train_data_dir"):
        prepare_data(Cfg())


def test_scan_does_not_touch_dataset_folder(tmp_path: Path) -> None:
    train = tmp_path / "train"
    img(train / "2_a" / "x.png")
    (train / "2_a" / "x.txt").write_text("a, b")
    (train / "notes").mkdir()
    before = snapshot(train)
    subsets, problems = subsets_from_dirs(train, None, SubsetSpec(Path(".")))
    assert problems and "notes" in problems[0]
    prepare_data(Cfg(train_data_dir=train, skip_bad_images=True, enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128))
    assert snapshot(train) == before


def snapshot(root: Path) -> dict:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir", os.stat(p).st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def test_reg_folders_follow_train_folders(tmp_path: Path) -> None:
    img(tmp_path / "train" / "2_ohwx dog" / "a.png")
    img(tmp_path / "reg" / "1_dog" / "r.png")
    description = scan_datasets(
        [prepare_data(Cfg(train_data_dir=tmp_path / "train", reg_data_dir=tmp_path / "reg")).description.datasets[0].spec])
    assert [(s.spec.name, s.spec.is_reg) for s in description.subsets()] == [("2_ohwx dog", False), ("1_dog", True)]


def test_images_directly_in_train_dir_are_reported(tmp_path: Path) -> None:
    img(tmp_path / "train" / "a.png")
    with pytest.raises(DatasetError, match="lie directly in --train_data_dir"):
        prepare_data(Cfg(train_data_dir=tmp_path / "train"))
