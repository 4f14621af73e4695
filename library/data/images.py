"""Pixels for one item: load, resize to cover the bucket, crop, colour-augment, flip, to [-1, 1].

Facts from sd-scripts (`trim_and_resize_if_required`, `utils.resize_image`,
`AugHelper.color_aug`): downscaling uses OpenCV's INTER_AREA and upscaling
PIL's LANCZOS; the overhang is cut centred (or at a random offset with
`random_crop`); colour augmentation, with probability 0.33, either shifts hue
by up to ±8 (OpenCV HSV, applied to the RGB array as sd-scripts does) or
applies a gamma in [0.95, 1.05]; flipping mirrors left-right. All randomness
comes from the `rng` argument.

`open_image` is the one way an image is read for training, latent caching,
regularization sets and img2img: EXIF orientation applied, every Pillow mode
converted to 8-bit RGB (16-bit greyscale scaled, not clipped to white), alpha
composited onto `ImageOptions.background` (white by default, as AUTOMATIC1111),
and images over `max_pixels` refused from their header, before decoding.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from library.data.buckets import Reso, crop_offsets
from library.data.specs import DEFAULT_MAX_PIXELS, ImageOptions
from library.errors import DatasetError

if TYPE_CHECKING:  # torch is imported where pixels become tensors: scanning folders (--help, plans) needs none
    import torch

HUE_SHIFT_LIMIT = 8


ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
EXIF_ORIENTATION = 0x0112


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header (orientations 5-8 swap the sides)."""
    try:
        orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: Pillow ignores it when transposing too
        orientation = 1
    w, h = img.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _too_large(path: Path, w: int, h: int, limit: int) -> DatasetError:
    return DatasetError(f"{path}: image is {w}x{h} = {w * h / 1e6:.1f} megapixels, above the limit of {limit / 1e6:.1f}", [
        f"{path}: downscale it (training resizes it to the bucket anyway), or raise --max_image_pixels to {w * h}"])


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Image.open (header only) with our pixel cap instead of Pillow's warning; the caller closes it."""
    if Image.MAX_IMAGE_PIXELS and max_pixels >= 2 * Image.MAX_IMAGE_PIXELS:  # raised past Pillow's hard refusal
        Image.MAX_IMAGE_PIXELS = max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as exc:  # Pillow refuses over twice its limit, before we see the size
            raise DatasetError(f"{path}: {exc}", [f"{path}: downscale it, or raise --max_image_pixels"]) from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise _too_large(path, w, h, max_pixels)
    return img


def image_size(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """The upright (width, height) of an image without decoding it; DatasetError when over `max_pixels`."""
    with _open_checked(path, max_pixels) as img:
        return oriented_size(img)


def _sixteen_to_eight(img: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) greyscale scaled to 8 bits; Pillow's convert('L') clips it to white."""
    values = np.asarray(img)
    if img.mode == "I" and values.size and int(values.max()) <= 255:  # an 8-bit image stored as I
        return Image.fromarray(values.astype(np.uint8))
    return Image.fromarray((np.clip(values, 0, 65535).astype(np.uint32) * 255 // 65535).astype(np.uint8))


def _float_to_eight(img: Image.Image) -> Image.Image:
    values = np.nan_to_num(np.asarray(img, dtype=np.float32))
    scale = 255.0 if values.size and float(values.max()) <= 1.0 else 1.0
    return Image.fromarray(np.clip(values * scale, 0, 255).round().astype(np.uint8))


def to_rgb(img: Image.Image, options: ImageOptions = ImageOptions()) -> tuple[Image.Image, Image.Image | None]:
    """Any Pillow mode as 8-bit RGB, plus the alpha channel when `options.alpha_mask` keeps it.

    Transparent pixels (RGBA, LA, palette with a transparent index) are composited
    onto `options.background`; plain `convert('RGB')` would keep whatever colour
    sits under them, usually black.
    """
    if img.mode in SIXTEEN_BIT_MODES:
        img = _sixteen_to_eight(img)
    elif img.mode == "F":
        img = _float_to_eight(img)
    has_alpha = img.mode in ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)
    if not has_alpha:
        return img.convert("RGB"), None
    rgba = img.convert("RGBA")
    if options.alpha_mask:
        return rgba.convert("RGB"), rgba.getchannel("A")
    background = Image.new("RGBA", rgba.size, (*options.background, 255))
    return Image.alpha_composite(background, rgba).convert("RGB"), None


def open_image(path: Path, options: ImageOptions = ImageOptions()) -> Image.Image:
    """An image file as upright 8-bit RGB (see `to_rgb`); DatasetError naming the file when it cannot be used."""
    path = Path(path)
    try:
        with _open_checked(path, options.max_pixels) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            rgb, _alpha = to_rgb(upright, options)  # the masked loss reads the alpha itself (data/masks.py)
            return rgb
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})", [f"{path}: re-export the image or delete it"]) from exc


def load_rgb(path: Path, options: ImageOptions = ImageOptions()) -> np.ndarray:
    """The image as an (H, W, 3) uint8 RGB array, upright; a read failure names the file."""
    return np.array(open_image(path, options), np.uint8)


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
    import torch

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
    options: ImageOptions = ImageOptions(),
) -> torch.Tensor:
    """The (3, H, W) training tensor of one item in its bucket."""
    rng = rng or random.Random(0)
    image = fit_to_bucket(load_rgb(path, options), bucket, resized_size, random_crop, rng)
    if use_color_aug:
        image = color_aug(image, rng)
    if flip:
        image = image[:, ::-1]
    return to_tensor(image)
