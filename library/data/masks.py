"""Loss masks for `--masked_loss`: where they come from and how they follow the image.

Facts from sd-scripts (`docs/masked_loss_README.md`, `apply_masked_loss` in
`library/custom_train_functions.py`): a mask is either the image's own alpha
channel (`--alpha_mask`, 0..255 → weight 0..1) or a mask image with the same
file stem and the same size in a separate folder (`conditioning_data_dir` of
a dataset subset), of which the R channel is used (white = learn, black =
ignore, 127 ≈ weight 0.5). The mask goes through the same resize, crop and
flip as its image; the trainer then shrinks it to the latent size with area
averaging and multiplies the per-element loss by it before the mean.

lorasmith adds: with `--train_data_dir` layouts, `--conditioning_data_dir`
mirrors the training folders (`<conditioning_data_dir>/<10_ohwx woman>/<stem>.png`);
images of subsets without a mask source (regularization folders) get an
all-ones mask, so batches can mix. The alpha channel is read from the raw file
here, never from the RGB image the trainer loads (which may be composited onto
a background colour).
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from library.data.buckets import Reso
from library.data.images import fit_to_bucket, item_pixels
from library.data.specs import ImageOptions
from library.data.specs import IMAGE_EXTENSIONS, SubsetSpec
from library.errors import DatasetError

ALPHA = "alpha"
MaskSource = Path | str | None  # a mask file, ALPHA, or None (all ones)


def find_mask_file(mask_dir: Path, image_path: Path) -> Path | None:
    """The mask of `image_path` in `mask_dir`: same stem, any image extension (sd-scripts' lookup)."""
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        candidate = mask_dir / (image_path.stem + ext)
        if candidate.is_file():
            return candidate
    return None


def mask_source(spec: SubsetSpec, image_path: Path) -> tuple[MaskSource, str | None]:
    """(source, problem) for one image: its mask file, its alpha channel, or None; a missing file is a problem."""
    if spec.mask_dir is not None:
        found = find_mask_file(Path(spec.mask_dir), image_path)
        if found is None:
            return None, (f"{image_path}: no mask {image_path.stem}.png (or .jpg/.webp) in {spec.mask_dir}; "
                          "add one (lorasmith dataset mask … --face writes them) or remove the image")
        return found, None
    return (ALPHA, None) if spec.alpha_mask else (None, None)


def _open_upright(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read mask ({exc})", [f"{path}: re-export it or delete it"]) from exc


def load_mask(source: MaskSource, image_path: Path) -> np.ndarray | None:
    """(H, W) uint8 weights 0..255 of the raw image: alpha channel (opaque when none), mask file's R channel."""
    if source is None:
        return None
    if source == ALPHA:
        img = _open_upright(image_path)
        has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        return np.array(img.convert("RGBA").getchannel("A")) if has_alpha else np.full((img.height, img.width), 255, np.uint8)
    img = _open_upright(Path(source))
    return np.array(img.convert("RGB").getchannel("R"))


def fit_mask(mask: np.ndarray, image_size: Reso, bucket: Reso, resized_size: Reso, random_crop: bool,
             rng: random.Random, flip: bool, where: Path) -> np.ndarray:
    """The mask resized, cropped and flipped exactly as its image (`rng` in the state the image's crop used)."""
    if (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise DatasetError(f"{where}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image_size[0]}x{image_size[1]}",
                           [f"{where}: make the mask the same size as its image"])
    fitted = fit_to_bucket(mask, bucket, resized_size, random_crop, rng)
    return fitted[:, ::-1] if flip else fitted


def item_pixels_and_mask(path: Path, source: MaskSource, image_size: Reso, bucket: Reso, resized_size: Reso, *,
                         random_crop: bool = False, use_color_aug: bool = False, flip: bool = False,
                         rng: random.Random | None = None,
                         options: ImageOptions = ImageOptions()) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) pixels exactly as `item_pixels` gives them and the (1, H, W) mask in [0, 1] with the same geometry.

    `image_size` is the size the bucket was chosen from (the scan's); a mask of another size is an error.
    """
    rng = rng or random.Random(0)
    if source == ALPHA:  # the alpha is the mask: keep the colours under it, as sd-scripts does
        options = dataclasses.replace(options, alpha_mask=True)
    state = rng.getstate()  # the crop offsets are the first draws: replay them for the mask
    pixels = item_pixels(path, bucket, resized_size, random_crop=random_crop, use_color_aug=use_color_aug, flip=flip,
                         rng=rng, options=options)
    raw = load_mask(source, path)
    if raw is None:
        return pixels, torch.ones((1, bucket[1], bucket[0]))
    replay = random.Random()
    replay.setstate(state)
    where = path if source == ALPHA else Path(source)
    return pixels, mask_tensor(fit_mask(raw, image_size, bucket, resized_size, random_crop, replay, flip, where))


def mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """(H, W) uint8 → (1, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(mask)).float().unsqueeze(0) / 255.0

