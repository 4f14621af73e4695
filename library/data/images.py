"""Pixels for one item: load, resize to cover the bucket, crop, colour-augment, flip, to [-1, 1].

Facts from sd-scripts (`trim_and_resize_if_required`, `utils.resize_image`,
`AugHelper.color_aug`): downscaling uses OpenCV's INTER_AREA and upscaling
PIL's LANCZOS; the overhang is cut centred (or at a random offset with
`random_crop`); colour augmentation, with probability 0.33, either shifts hue
by up to ±8 (OpenCV HSV, applied to the RGB array as sd-scripts does) or
applies a gamma in [0.95, 1.05]; flipping mirrors left-right. All randomness
comes from the `rng` argument.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from library.data.buckets import Reso, crop_offsets
from library.errors import DatasetError

HUE_SHIFT_LIMIT = 8


def load_rgb(path: Path) -> np.ndarray:
    """The image as an (H, W, 3) uint8 RGB array; a read failure names the file."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), np.uint8)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})", [f"{path}: re-export the image or delete it"]) from exc


def resize(image: np.ndarray, size: Reso) -> np.ndarray:
    """Resize to (width, height): INTER_AREA when shrinking, LANCZOS when any side grows (sd-scripts)."""
    h, w = image.shape[:2]
    if (w, h) == tuple(size):
        return image
    if w >= size[0] and h >= size[1]:
        import cv2  # imported on first use: OpenCV costs ~15 MB of memory a run whose images all fit never needs

        return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)
    return np.array(Image.fromarray(image).resize(tuple(size), Image.Resampling.LANCZOS))


def fit_to_bucket(image: np.ndarray, bucket: Reso, resized_size: Reso, random_crop: bool, rng: random.Random) -> np.ndarray:
    """Scale to `resized_size` (which covers the bucket), then crop to exactly the bucket."""
    image = resize(image, resized_size)
    h, w = image.shape[:2]
    left, top = crop_offsets((w, h), bucket, random_crop, rng)
    image = image[top : top + bucket[1], left : left + bucket[0]]
    if image.shape[0] != bucket[1] or image.shape[1] != bucket[0]:  # resized_size smaller than bucket: a bug upstream
        raise DatasetError(f"internal error: image of {w}x{h} cannot fill bucket {bucket[0]}x{bucket[1]}")
    return image


def color_aug(image: np.ndarray, rng: random.Random) -> np.ndarray:
    """sd-scripts' colour augmentation: with p=0.33, a hue shift or a gamma change."""
    if rng.random() > 0.33:
        return image
    if rng.random() > 0.5:
        import cv2

        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        shift = rng.uniform(-HUE_SHIFT_LIMIT, HUE_SHIFT_LIMIT)
        if shift < 0:
            shift += 180
        hsv[:, :, 0] = (hsv[:, :, 0] + shift) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    gamma = rng.uniform(0.95, 1.05)
    return np.clip(image.astype(np.float64) ** gamma, 0, 255).astype(np.uint8)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (3, H, W) float32 in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return t / 127.5 - 1.0


def item_pixels(
    path: Path,
    bucket: Reso,
    resized_size: Reso,
    *,
    random_crop: bool = False,
    use_color_aug: bool = False,
    flip: bool = False,
    rng: random.Random | None = None,
) -> torch.Tensor:
    """The (3, H, W) training tensor of one item in its bucket."""
    rng = rng or random.Random(0)
    image = fit_to_bucket(load_rgb(path), bucket, resized_size, random_crop, rng)
    if use_color_aug:
        image = color_aug(image, rng)
    if flip:
        image = image[:, ::-1]
    return to_tensor(image)
