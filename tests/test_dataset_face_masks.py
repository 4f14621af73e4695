"""`lorasmith dataset mask DIR OUT --face`: face boxes grown by a margin, mirrored folders, usable by --masked_loss."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_tools.face_masks import face_mask, face_masks, grow_box
from library.cli import main
from library.config import TrainConfig
from library.data.prepare import prepare_data
from library.errors import DatasetError
from test_dataset_tools_crop import _face_image


def test_grow_box_and_mask_pixels():
    assert grow_box((40, 40, 60, 60), 0.5, 100, 100) == (30, 30, 70, 70)
    assert grow_box((0, 90, 20, 100), 0.5, 100, 100) == (0, 85, 30, 100)  # clamped at the borders
    m = np.asarray(face_mask((100, 80), [(40, 20, 60, 40)], 0.0))
    assert m.shape == (80, 100) and m[20:40, 40:60].min() == 255 and m.sum() == 20 * 20 * 255
    assert np.asarray(face_mask((10, 10), [], 0.2)).min() == 255  # no face: learn the whole image


def test_masks_mirror_subfolders_and_feed_masked_loss(tmp_path):
    img = tmp_path / "img" / "2_ohwx woman"
    img.mkdir(parents=True)
    for i, w in enumerate((96, 128, 80)):
        Image.new("RGB", (w, 64), (i * 40, 90, 90)).save(img / f"{i}.jpg")
    fake = lambda im: [] if im.width == 80 else [(10, 10, 30, 30)]  # noqa: E731
    run = face_masks(tmp_path / "img", tmp_path / "masks", margin=0.5, detector=fake, progress=False)
    written = sorted(p.relative_to(tmp_path / "masks").as_posix() for p in run.written)
    assert written == ["2_ohwx woman/0.png", "2_ohwx woman/1.png", "2_ohwx woman/2.png"]
    assert any("2.jpg: no face found" in n for n in run.notes)
    m0 = np.asarray(Image.open(tmp_path / "masks" / "2_ohwx woman" / "0.png"))
    assert m0.shape == (64, 96) and m0[5:35, 0:40].min() == 255 and m0[40:, 40:].max() == 0
    again = face_masks(tmp_path / "img", tmp_path / "masks", detector=fake, progress=False)
    assert not again.written and len(again.skipped_existing) == 3  # re-running is safe
    cfg = TrainConfig(train_data_dir=str(tmp_path / "img"), resolution="64", enable_bucket=True, min_bucket_reso=64,
                      max_bucket_reso=128, masked_loss=True, conditioning_data_dir=str(tmp_path / "masks"))
    masks = prepare_data(cfg).masks
    assert sorted(Path(p).name for p in masks.values()) == ["0.png", "1.png", "2.png"]


def test_cli_with_the_real_detector(tmp_path):
    src = tmp_path / "faces"
    src.mkdir()
    _face_image(src / "face.png", centre=(400, 300), size=250)
    assert main(["dataset", "mask", str(src), str(tmp_path / "out"), "--face", "--no_progress"]) == 0
    m = np.asarray(Image.open(tmp_path / "out" / "face.png"))
    assert m.shape == (600, 800) and m[300, 400] == 255 and m[10, 10] == 0 and m[590, 790] == 0
    with pytest.raises(DatasetError, match="margin"):
        face_masks(src, tmp_path / "o2", margin=-1)
