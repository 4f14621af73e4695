"""Resize and/or convert a folder of images, keeping each file's name stem.

Two ways to size: ``max_side`` scales so the longer side is at most N (aspect
kept), ``exact`` scales to cover W×H and centre-crops the overflow (aspect kept,
never distorted). Downscaling uses Lanczos; an image that would need upscaling
is written at its own size and listed unless upscaling is allowed. With neither,
images are only converted to the requested format.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dataset_tools.images import (
    ToolRun,
    pending_images,
    refuse_overlap,
    save_image,
    scan_folder,
    start_run,
)
from library.config import parse_resolution
from library.errors import ConfigError, DatasetError


def parse_size(text: str) -> tuple[int, int]:
    """'768' -> (768, 768); '512x768' or '512,768' -> (512, 768) as (width, height)."""
    try:
        return parse_resolution(text)
    except ConfigError:
        raise DatasetError(f"bad size {text!r}", ["write it as N or WxH with positive integers, e.g. 768 or 512x768"]) from None


def max_side_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Size with the longer side equal to `max_side`, aspect kept."""
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def cover_resize(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale to cover `size`, then centre-crop to exactly `size` (no distortion)."""
    tw, th = size
    scale = max(tw / img.width, th / img.height)
    sw, sh = max(tw, round(img.width * scale)), max(th, round(img.height * scale))
    scaled = img.resize((sw, sh), Image.Resampling.LANCZOS, reducing_gap=3.0)
    left, top = (sw - tw) // 2, (sh - th) // 2
    return scaled.crop((left, top, left + tw, top + th))


@dataclass
class ResizeOptions:
    max_side: int | None = None
    exact: tuple[int, int] | None = None
    fmt: str | None = None
    quality: int = 95
    upscale: bool = False
    overwrite: bool = False


def resize_image(img: Image.Image, options: ResizeOptions) -> tuple[Image.Image, bool]:
    """Returns (result, too_small); a too-small image comes back unchanged unless upscaling is allowed."""
    if options.max_side:
        if max(img.size) <= options.max_side:
            # Max side is an upper bound: smaller images are already within it.
            return img, False
        return img.resize(max_side_size(img.width, img.height, options.max_side), Image.Resampling.LANCZOS,
                          reducing_gap=3.0), False
    if options.exact:
        tw, th = options.exact
        # Covering W×H upscales exactly when either side is short of its target.
        if (img.width < tw or img.height < th) and not options.upscale:
            return img, True
        return cover_resize(img, options.exact), False
    return img, False


def resize_folder(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    options: ResizeOptions | None = None,
    progress: bool = True,
) -> ToolRun:
    """Resize/convert every image in `src` into `dst`; sources are never modified."""
    options = options or ResizeOptions()
    if options.max_side and options.exact:
        raise DatasetError("give either a max side or an exact size, not both")
    src, dst = Path(src), Path(dst)
    scan = scan_folder(src)
    refuse_overlap([src], dst, nested_ok=True)
    run = start_run(scan)
    for path, dest, img in pending_images(scan, dst, options.fmt, run, overwrite=options.overwrite, desc="resize", progress=progress):
        result, too_small = resize_image(img, options)
        if too_small:
            run.too_small.append(f"{path}: {img.width}x{img.height} is smaller than {options.exact}, kept at its size")
        save_image(result, dest, options.quality)
        run.written.append(dest)
    return run
