"""Regularization images from real class photos (what the seed guide recommends).

The trainer uses as many reg image-repeats per epoch as there are training
image-repeats (sd-scripts' balancing), so the set needs training images ×
repeats photos. From a pool of class photos (e.g. 1,000 photos of women) this
picks that many, deterministically from a seed: the pool is sorted by name,
shuffled with the seed, and taken in that order, skipping unreadable photos and
photos too small for the training resolution (each listed). Each picked photo is
cropped to the training aspect ratio (centre, or the largest face) and resized
to the training resolution with Lanczos, then written to
``<dest>/<repeats>_<class>/`` under its own stem. A re-run with the same seed
picks the same photos and skips the ones already written.
"""
from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from dataset_tools.crop import CropOptions, FaceDetector, HaarFaceDetector, crop_image
from dataset_tools.images import (
    ToolRun,
    load_image,
    refuse_overlap,
    save_image,
    scan_folder,
    start_run,
)
from library.config import default_config
from library.data.prepare import prepare_data
from library.errors import DatasetError


def training_items(train_data_dir: str | os.PathLike[str], caption_extension: str | None = None) -> int:
    """Training images × repeats as the trainer counts them (library.data), over all `<repeats>_<tokens>` folders."""
    cfg = dataclasses.replace(default_config(), train_data_dir=str(train_data_dir), skip_bad_images=True)
    if caption_extension:
        cfg = dataclasses.replace(cfg, caption_extension=caption_extension)
    return prepare_data(cfg).plan.train_items


def selection_order(candidates: list[Path], seed: int) -> list[Path]:
    """The order photos are picked in: names sorted, then shuffled by `seed` (same seed, same order)."""
    order = sorted(candidates, key=lambda p: p.name)
    random.Random(f"lorasmith-reg:{seed}").shuffle(order)
    return order


@dataclass
class RegResult:
    folder: Path
    needed: int
    selected: list[Path] = field(default_factory=list)  # source photos, in pick order
    run: ToolRun = field(default_factory=ToolRun)
    warnings: list[str] = field(default_factory=list)


def _fit(img: Image.Image, resolution: tuple[int, int], upscale: bool) -> Image.Image | None:
    """Resize a crop of the training aspect to exactly `resolution`; None if that would upscale."""
    if (img.width < resolution[0] or img.height < resolution[1]) and not upscale:
        return None
    if img.size == resolution:
        return img
    return img.resize(resolution, Image.Resampling.LANCZOS, reducing_gap=3.0)


def reg_from_photos(photos: str | os.PathLike[str], dest: str | os.PathLike[str], class_prompt: str,
                    needed: int, resolution: tuple[int, int] = (512, 512), repeats: int = 1, seed: int = 0,
                    face: bool = False, upscale: bool = False, fmt: str = "png", overwrite: bool = False,
                    detector: FaceDetector | None = None, progress: bool = True) -> RegResult:
    """Pick `needed` photos deterministically, crop/resize them, write `<dest>/<repeats>_<class>/`."""
    if needed < 1 or repeats < 1:
        raise DatasetError(f"need at least 1 image and 1 repeat, got {needed} images, {repeats} repeats")
    if not class_prompt.strip() or "/" in class_prompt or "\\" in class_prompt:
        raise DatasetError(f"class prompt {class_prompt!r} cannot name a folder", ["give the class, e.g. 'woman'"])
    photos, dest = Path(photos), Path(dest)
    refuse_overlap([photos], dest)
    scan = scan_folder(photos)
    folder = dest / f"{repeats}_{class_prompt.strip()}"
    result = RegResult(folder, needed, run=start_run(scan))
    options = CropOptions(ratio=resolution, face=face)
    if face and detector is None:
        detector = HaarFaceDetector()
    bar = tqdm(total=needed, desc="reg photos", unit="img", disable=not progress)
    for path in selection_order(scan.images, seed):
        if len(result.selected) >= needed:
            break
        out = folder / f"{path.stem}.{fmt}"
        if out.exists() and not overwrite:
            result.run.skipped_existing.append(out)
        elif not _write_one(path, out, options, resolution, upscale, detector, result.run):
            continue
        result.selected.append(path)
        bar.update(1)
    bar.close()
    if len(result.selected) < needed:
        result.warnings.append(
            f"only {len(result.selected)} usable photos in {photos} for the {needed} needed "
            f"(training images × repeats); reg images will be repeated — add {needed - len(result.selected)} more")
    return result


def _write_one(path: Path, out: Path, options: CropOptions, resolution: tuple[int, int], upscale: bool,
               detector: FaceDetector | None, run: ToolRun) -> bool:
    try:
        img = load_image(path)
    except DatasetError as exc:
        run.unreadable.append(exc.summary)
        return False
    cropped, note = crop_image(img, path, options, detector)
    if note:
        run.notes.append(note)
    fitted = _fit(cropped, resolution, upscale)
    if fitted is None:
        run.too_small.append(f"{path}: {img.width}x{img.height} is too small for {resolution[0]}x{resolution[1]}, not used")
        return False
    save_image(fitted, out)
    run.written.append(out)
    return True
