"""Pixel pipeline: cover-resize, centre/random crop, colour augmentation, [-1, 1] tensors."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from library.data.images import color_aug, fit_to_bucket, item_pixels, resize, to_tensor


def stripes(width: int, height: int) -> np.ndarray:
    """Each column's red value is its x coordinate, so crops can be located exactly."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, :, 0] = np.arange(width, dtype=np.uint8)[None, :]
    return arr


def test_centre_crop_without_resize() -> None:
    out = fit_to_bucket(stripes(100, 64), (64, 64), (100, 64), False, random.Random(0))
    assert out.shape == (64, 64, 3)
    assert out[0, 0, 0] == 18  # (100 - 64) // 2


def test_random_crop_offsets_vary_and_stay_inside() -> None:
    starts = {int(fit_to_bucket(stripes(100, 64), (64, 64), (100, 64), True, random.Random(s))[0, 0, 0]) for s in range(30)}
    assert len(starts) > 5 and min(starts) >= 0 and max(starts) <= 36


def test_resize_down_area_and_up_lanczos_sizes() -> None:
    assert resize(stripes(100, 50), (50, 25)).shape == (25, 50, 3)
    assert resize(stripes(20, 10), (40, 20)).shape == (20, 40, 3)


def test_color_aug_is_seeded_and_mostly_identity() -> None:
    img = np.full((8, 8, 3), 120, np.uint8)
    img[:, :, 1] = 30
    outs = [color_aug(img.copy(), random.Random(s)) for s in range(60)]
    changed = sum(not np.array_equal(o, img) for o in outs)
    assert 5 < changed < 40  # applied with probability 0.33
    assert all(np.array_equal(color_aug(img.copy(), random.Random(s)), outs[s]) for s in range(10))


def test_to_tensor_range_and_item_pixels(tmp_path: Path) -> None:
    t = to_tensor(np.array([[[0, 255, 127]]], np.uint8))
    assert t.shape == (3, 1, 1) and t[0, 0, 0] == -1.0 and t[1, 0, 0] == 1.0
    Image.fromarray(stripes(128, 64)).save(tmp_path / "s.png")
    px = item_pixels(tmp_path / "s.png", (64, 64), (128, 64), flip=True)
    assert px.shape == (3, 64, 64)
    # flipped: the left column now holds the right edge of the centre crop (x = 32 + 63 = 95)
    assert abs(px[0, 0, 0].item() - (95 / 127.5 - 1.0)) < 1e-6
