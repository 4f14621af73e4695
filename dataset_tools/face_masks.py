"""Loss masks from detected faces, for `--masked_loss`: learn the face, not the clothes or the background.

For every image of a folder (or of each `<repeats>_<tokens>` subfolder, mirrored
into the output so it can be given as `--conditioning_data_dir`), the faces the
OpenCV frontal-face Haar cascade finds are grown by `margin` (a fraction of the
face box's size on every side, so hair and chin are kept) and painted white on
black, at the image's own size, as `<stem>.png` — what the trainer's mask
lookup expects. An image without a face gets an all-white mask (trained whole)
and is listed, so a run never stops on a missing mask.
"""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

from dataset_tools.crop import Box, FaceDetector, HaarFaceDetector
from dataset_tools.images import ToolRun, is_image_file, pending_images, refuse_overlap, save_image, scan_folder, start_run
from library.errors import DatasetError


def grow_box(box: Box, margin: float, width: int, height: int) -> Box:
    """The box widened by `margin` × its size on each side, clamped to the image."""
    left, top, right, bottom = box
    dx, dy = (right - left) * margin, (bottom - top) * margin
    return (max(0, round(left - dx)), max(0, round(top - dy)), min(width, round(right + dx)), min(height, round(bottom + dy)))


def face_mask(size: tuple[int, int], boxes: list[Box], margin: float) -> Image.Image:
    """White (learn) inside every grown face box, black elsewhere; all white when there is no face."""
    if not boxes:
        return Image.new("L", size, 255)
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for box in boxes:
        left, top, right, bottom = grow_box(box, margin, *size)
        draw.rectangle([left, top, right - 1, bottom - 1], fill=255)
    return mask


def _mask_folder(src: Path, dst: Path, detector: FaceDetector, margin: float, overwrite: bool, run: ToolRun,
                 progress: bool) -> None:
    scan = scan_folder(src)
    sub = start_run(scan, list_non_images=False)
    run.duplicates += sub.duplicates
    for path, dest, img in pending_images(scan, dst, "png", run, overwrite=overwrite, desc=f"masks {src.name}", progress=progress):
        boxes = detector(img)
        if not boxes:
            run.notes.append(f"{path}: no face found, mask is all white (the whole image is learned)")
        save_image(face_mask(img.size, boxes, margin), dest)
        run.written.append(dest)


def face_masks(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, margin: float = 0.2,
               detector: FaceDetector | None = None, overwrite: bool = False, progress: bool = True) -> ToolRun:
    """Masks for `src`'s images into `dst`, and for each image subfolder into `dst/<subfolder>`."""
    if not 0 <= margin <= 2:
        raise DatasetError(f"--margin {margin} is out of range", ["give a fraction of the face size between 0 and 2, e.g. 0.2"])
    src, dst = Path(src), Path(dst)
    refuse_overlap([src], dst, nested_ok=False)
    detector = detector or HaarFaceDetector()
    run = ToolRun()
    folders = [(src, dst)] + [(d, dst / d.name) for d in sorted(src.iterdir()) if d.is_dir() and not d.name.startswith(".")
                              and any(is_image_file(p) for p in d.iterdir())]
    for folder, out in folders:
        _mask_folder(folder, out, detector, margin, overwrite, run, progress)
    return run
