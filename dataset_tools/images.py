"""Reading, listing and writing dataset images safely.

Every dataset tool walks a source folder the same way: images are opened fully
(so a truncated file fails here, naming its path, not halfway through
training), EXIF orientation is applied (phone photos are stored sideways with a
rotation tag), files that are not images are skipped and listed, and two files
with the same stem in different formats (``a.jpg`` and ``a.png``) are flagged
because their outputs and captions would collide. Outputs are written through
``library.fileio`` so an interrupted run never leaves half an image behind.
"""
from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from library.errors import DatasetError
from library.fileio import atomic_path

# The extensions sd-scripts' dataset loader picks up (the common ones).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Formats a tool may write, by the name the user types.
OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}
_EXTENSION_OF = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp"}


@dataclass
class FolderScan:
    """What a folder holds, before anything is opened."""

    folder: Path
    images: list[Path] = field(default_factory=list)
    non_images: list[Path] = field(default_factory=list)
    # stem -> every image sharing it; only the first (sorted) is used.
    duplicate_stems: dict[str, list[Path]] = field(default_factory=dict)


@dataclass
class ToolRun:
    """What a folder tool did, for the CLI summary and for tests."""

    written: list[Path] = field(default_factory=list)
    skipped_existing: list[Path] = field(default_factory=list)
    too_small: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    non_images: list[Path] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """Human-readable summary: counts first, then every listed file."""
        lines = [f"written: {len(self.written)}, already done (skipped): {len(self.skipped_existing)}"]
        sections = (
            ("too small for the target (not stretched)", self.too_small),
            ("unreadable or truncated images", self.unreadable),
            ("non-image files skipped", [str(p) for p in self.non_images]),
            ("duplicate names across formats (first one used)", self.duplicates),
            ("notes", self.notes),
        )
        for title, items in sections:
            if items:
                lines.append(f"{title}: {len(items)}")
                lines.extend(f"  {item}" for item in items)
        return lines


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def scan_folder(folder: str | os.PathLike[str]) -> FolderScan:
    """List a folder's images (sorted by name) and its other files; not recursive."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"input folder not found: {folder}", ["give an existing folder of images"])
    scan = FolderScan(folder=folder)
    by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.iterdir()):
        if path.is_dir() or path.name.startswith("."):
            continue
        if is_image_file(path):
            by_stem[path.stem].append(path)
        else:
            scan.non_images.append(path)
    for stem in sorted(by_stem):
        paths = by_stem[stem]
        scan.images.append(paths[0])
        if len(paths) > 1:
            scan.duplicate_stems[stem] = paths
    return scan


def start_run(scan: FolderScan, list_non_images: bool = True) -> ToolRun:
    """A ToolRun pre-filled with what the scan already says is wrong."""
    run = ToolRun()
    if list_non_images:
        run.non_images = list(scan.non_images)
    for stem, paths in scan.duplicate_stems.items():
        names = ", ".join(p.name for p in paths)
        run.duplicates.append(f"{stem}: {names} -> using {paths[0].name}")
    return run


def pending_images(
    scan: FolderScan, dst: Path, fmt: str | None, run: ToolRun, *, overwrite: bool, desc: str,
    progress: bool | Callable[[int, int], None]
) -> Iterator[tuple[Path, Path, Image.Image]]:
    """(source, destination, upright image) for each image still to write.

    Existing outputs are skipped (re-runs are idempotent unless `overwrite`) and
    unreadable images are listed in `run`; a progress bar covers the folder, or,
    when `progress` is a function, it is called as `progress(done, total)` (the GUI's counts).
    """
    report = progress if callable(progress) else None
    total = len(scan.images)
    for done, path in enumerate(tqdm(scan.images, desc=desc, unit="img", disable=report is not None or not progress)):
        if report is not None:
            report(done, total)
        dest = output_path(dst, path, fmt)
        if dest.exists() and not overwrite:
            run.skipped_existing.append(dest)
            continue
        try:
            img = load_image(path)
        except DatasetError as exc:
            run.unreadable.append(exc.summary)
            continue
        yield path, dest, img
    if report is not None:
        report(total, total)


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image fully, upright (EXIF orientation applied), as 8-bit RGB.

    The trainer's own reader (`library.data.images.open_image`): transparent pixels are
    composited on white (dropping alpha would turn them black, which a model would learn
    as part of the subject), 16-bit greyscale is scaled, and huge images are refused.
    """
    from library.data.images import open_image  # imports torch: not for --help

    return open_image(Path(path))


def output_path(dest_dir: Path, source: Path, fmt: str | None) -> Path:
    """Destination for `source` in `dest_dir`: same stem, new extension if a format is given."""
    if fmt is None:
        return dest_dir / source.name
    return dest_dir / (source.stem + _EXTENSION_OF[check_format(fmt)])


def check_format(fmt: str) -> str:
    key = fmt.lower().lstrip(".")
    if key not in OUTPUT_FORMATS:
        raise DatasetError(f"unknown output format {fmt!r}", [f"use one of: {', '.join(sorted(_EXTENSION_OF))}"])
    return key


def save_image(img: Image.Image, dest: Path, quality: int = 95) -> None:
    """Write atomically; the format follows `dest`'s extension."""
    pil_format = Image.registered_extensions().get(dest.suffix.lower())
    if pil_format is None:
        raise DatasetError(f"cannot tell the image format of {dest}", ["use .png, .jpg, .webp or .bmp"])
    options: dict[str, object] = {}
    if pil_format in ("JPEG", "WEBP"):
        options["quality"] = quality
    with atomic_path(dest) as tmp:
        img.save(tmp, format=pil_format, **options)


def resize_short_side(img: Image.Image, target: int, upscale: bool = False) -> Image.Image | None:
    """Scale so the short side equals `target` (Lanczos); None if that would upscale and it is not allowed."""
    short = min(img.size)
    if short == target:
        return img
    if short < target and not upscale:
        return None
    scale = target / short
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    # Make the short side exact despite rounding.
    if img.width <= img.height:
        size = (target, size[1])
    else:
        size = (size[0], target)
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def refuse_overlap(sources: list[Path], dest: Path, nested_ok: bool = False) -> None:
    """Raise when the destination is a source, or (unless `nested_ok`) one contains the other.

    Writing into a source folder would overwrite the user's files and mix
    outputs into the inputs the next run reads. Single-folder tools read only
    the folder's top level, so `photos/cropped` is safe for them (`nested_ok`);
    folder preparation copies whole trees and must refuse nesting.
    """
    dest_r = dest.resolve()
    problems = []
    for src in sources:
        src_r = src.resolve()
        nested = dest_r.is_relative_to(src_r) or src_r.is_relative_to(dest_r)
        if dest_r == src_r or (nested and not nested_ok):
            problems.append(f"{src} and {dest} overlap")
    if problems:
        raise DatasetError("destination overlaps a source folder", problems + ["choose a separate destination folder"])
