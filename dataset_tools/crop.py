"""Crop a folder of photos to 1:1 (or any ratio) around the centre, a focus point or a face.

How the crop centre is chosen, per image, first match wins:
1. a focus sidecar beside the image: ``<stem>.focus``, a text file holding one
   line ``x,y`` — fractions of the upright image's width and height (0..1,
   measured from the top-left corner after EXIF rotation), e.g. ``0.5,0.3``
   for "centre, upper third". Blank lines and lines starting with ``#`` are
   ignored;
2. the largest face, when face-aware mode is on (OpenCV's frontal-face Haar
   cascade shipped inside opencv-python-headless, so nothing is downloaded);
   when no face is found the crop falls back to (3) and the image gets a note;
3. the ``--focus x,y`` given for the whole folder (default ``0.5,0.5``, the centre).

The crop is the largest box of the requested ratio whose centre is as close to
that point as the image borders allow. Optionally the crop is then resized so
its short side is a target size with Lanczos (high-quality downscaling), never
upscaled unless asked; crops smaller than the target are kept at their own size
and listed.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_tools.images import (
    ToolRun,
    pending_images,
    refuse_overlap,
    resize_short_side,
    save_image,
    scan_folder,
    start_run,
)
from library.errors import DatasetError

FOCUS_SIDECAR_SUFFIX = ".focus"
Box = tuple[int, int, int, int]  # left, top, right, bottom
FaceDetector = Callable[[Image.Image], "list[Box]"]


def parse_ratio(text: str) -> tuple[int, int]:
    """'1:1', '2:3', '16x9' -> (w, h) positive integers."""
    for sep in (":", "x", "/"):
        if sep in text:
            a, _, b = text.partition(sep)
            try:
                w, h = int(a), int(b)
            except ValueError:
                break
            if w > 0 and h > 0:
                return w, h
            break
    raise DatasetError(f"bad aspect ratio {text!r}", ["write it as W:H with positive integers, e.g. 1:1 or 2:3"])


def parse_focus(text: str, source: str = "--focus") -> tuple[float, float]:
    """'x,y' fractions of width and height -> (x, y), each in 0..1."""
    parts = text.strip().split(",")
    try:
        x, y = (float(p) for p in parts)
    except ValueError:
        x = y = -1.0
    if len(parts) != 2 or not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise DatasetError(
            f"bad focus point {text.strip()!r} in {source}",
            ["write it as x,y with fractions of width and height between 0 and 1, e.g. 0.5,0.3"],
        )
    return x, y


def read_focus_sidecar(image_path: Path) -> tuple[float, float] | None:
    """The focus point from ``<stem>.focus`` beside the image, if there is one."""
    sidecar = image_path.with_suffix(FOCUS_SIDECAR_SUFFIX)
    if not sidecar.is_file():
        return None
    lines = [ln.strip() for ln in sidecar.read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(lines) != 1:
        raise DatasetError(f"focus sidecar {sidecar} must hold exactly one line x,y", ["e.g. 0.5,0.3"])
    return parse_focus(lines[0], source=str(sidecar))


def crop_box(width: int, height: int, ratio: tuple[int, int], focus: tuple[float, float] = (0.5, 0.5)) -> Box:
    """Largest box of aspect `ratio` inside width×height, centred on `focus` as far as the borders allow."""
    rw, rh = ratio
    if width * rh >= height * rw:  # image wider than the ratio: keep full height
        ch = height
        cw = min(width, max(1, round(height * rw / rh)))
    else:
        cw = width
        ch = min(height, max(1, round(width * rh / rw)))
    cx, cy = focus[0] * width, focus[1] * height
    left = round(min(max(cx - cw / 2, 0), width - cw))
    top = round(min(max(cy - ch / 2, 0), height - ch))
    return left, top, left + cw, top + ch


def box_centre_fraction(box: Box, width: int, height: int) -> tuple[float, float]:
    left, top, right, bottom = box
    return (left + right) / 2 / width, (top + bottom) / 2 / height


class HaarFaceDetector:
    """Frontal faces with the Haar cascade data that ships inside opencv-python-headless."""

    CASCADE = "haarcascade_frontalface_default.xml"

    def __init__(self) -> None:
        import cv2  # imported here: only face-aware crops need OpenCV

        if not hasattr(cv2, "CascadeClassifier"):
            raise DatasetError(
                f"this OpenCV ({cv2.__version__}) has no CascadeClassifier",
                ["install opencv-python-headless>=4.10,<5 (OpenCV 5 dropped the Haar cascades)"],
            )
        path = os.path.join(cv2.data.haarcascades, self.CASCADE)
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise DatasetError(f"cannot load the face cascade {path}", ["reinstall opencv-python-headless"])
        self._cv2 = cv2

    def __call__(self, img: Image.Image) -> list[Box]:
        gray = np.asarray(img.convert("L"))
        # Faces smaller than 1/20 of the short side are noise at training resolution.
        min_side = max(24, min(img.size) // 20)
        found = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        return [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in found]


def largest_face(boxes: list[Box]) -> Box | None:
    if not boxes:
        return None
    return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))


@dataclass
class CropOptions:
    ratio: tuple[int, int] = (1, 1)
    focus: tuple[float, float] = (0.5, 0.5)
    face: bool = False
    size: int | None = None  # short side after cropping
    upscale: bool = False
    fmt: str | None = None  # None keeps each file's own format
    quality: int = 95
    overwrite: bool = False


def crop_image(
    img: Image.Image, path: Path, options: CropOptions, detector: FaceDetector | None
) -> tuple[Image.Image, str | None]:
    """Crop one upright image; returns the crop and a note when face mode fell back."""
    focus, note = read_focus_sidecar(path), None
    if focus is None and options.face and detector is not None:
        face = largest_face(detector(img))
        if face is None:
            note = f"{path.name}: no face found, cropped around the focus point {options.focus}"
        else:
            focus = box_centre_fraction(face, img.width, img.height)
    if focus is None:
        focus = options.focus
    return img.crop(crop_box(img.width, img.height, options.ratio, focus)), note


def crop_folder(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    options: CropOptions | None = None,
    detector: FaceDetector | None = None,
    progress: bool = True,
) -> ToolRun:
    """Crop every image in `src` into `dst` (same stems); sources are never modified."""
    options = options or CropOptions()
    src, dst = Path(src), Path(dst)
    scan = scan_folder(src)
    refuse_overlap([src], dst, nested_ok=True)
    run = start_run(scan)
    run.non_images = [p for p in run.non_images if p.suffix != FOCUS_SIDECAR_SUFFIX]
    if options.face and detector is None:
        detector = HaarFaceDetector()
    for path, dest, img in pending_images(scan, dst, options.fmt, run, overwrite=options.overwrite, desc="crop", progress=progress):
        cropped, note = crop_image(img, path, options, detector)
        if note:
            run.notes.append(note)
        if options.size:
            resized = resize_short_side(cropped, options.size, options.upscale)
            if resized is None:
                run.too_small.append(f"{path}: crop is {cropped.width}x{cropped.height}, kept at that size")
            else:
                cropped = resized
        save_image(cropped, dest, options.quality)
        run.written.append(dest)
    return run
