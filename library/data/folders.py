"""One scan of the dataset folders: every image, its caption and size, every problem.

Facts from sd-scripts (`config_util.generate_dreambooth_subsets_config_by_subdirs`,
`train_util.glob_images`, `DreamBoothDataset.read_caption`): subfolders are
taken in directory-listing order (train folders, then reg folders), named
`<repeats>_<class tokens>` (split on the first "_"); images in a folder are
sorted by path; the caption is the first line of `<stem><caption_extension>`,
or the folder's class tokens when there is no caption file.

Where sd-scripts silently ignores or crashes, we collect a problem line naming
the path and the fix, and raise one `DatasetError` listing all of them (or,
with `skip_bad_images`, drop the bad inputs and list what was skipped). Nothing
here writes to the dataset folders.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from library.data.buckets import Reso
from library.data.images import image_size
from library.data.specs import IMAGE_EXTENSIONS, DatasetSpec, ImageOptions, SubsetSpec
from library.errors import DatasetError

PROGRESS_FROM = 50  # show a progress bar for folders with at least this many images


@dataclass(frozen=True)
class ImageEntry:
    """One usable image: path, raw caption (before prefix/shuffle), where it came from, (width, height)."""

    path: Path
    caption: str
    caption_source: str  # "file" or "class_tokens"
    size: Reso


@dataclass
class DescribedSubset:
    spec: SubsetSpec
    images: list[ImageEntry]


@dataclass
class DescribedDataset:
    spec: DatasetSpec
    subsets: list[DescribedSubset]


@dataclass
class DatasetDescription:
    """Everything the scan found, before any tensor exists; `skipped` lists inputs left out."""

    datasets: list[DescribedDataset]
    skipped: list[str] = field(default_factory=list)

    def subsets(self) -> list[DescribedSubset]:
        return [s for d in self.datasets for s in d.subsets]


def parse_folder_name(name: str) -> tuple[int, str] | None:
    """'10_ohwx woman' → (10, 'ohwx woman'); None when the part before the first '_' is not a number."""
    head, _, rest = name.partition("_")
    try:
        repeats = int(head)
    except ValueError:
        return None
    return repeats, rest


def subsets_from_dirs(
    train_data_dir: str | os.PathLike | None,
    reg_data_dir: str | os.PathLike | None,
    template: SubsetSpec,
) -> tuple[list[SubsetSpec], list[str]]:
    """Subsets for every `<repeats>_<tokens>` folder (train, then reg) plus problem lines for the rest."""
    subsets: list[SubsetSpec] = []
    problems: list[str] = []
    for base, is_reg in ((train_data_dir, False), (reg_data_dir, True)):
        if base is None or str(base) == "":
            continue
        flag = "reg_data_dir" if is_reg else "train_data_dir"
        base = Path(base)
        if not base.is_dir():
            problems.append(f"{base}: {flag} is not a folder; point --{flag} at the folder holding '<repeats>_<name>' subfolders")
            continue
        loose = list_images(base)
        if loose:
            problems.append(
                f"{base}: {len(loose)} image(s) lie directly in --{flag}; move them into a '<repeats>_<class tokens>' subfolder"
                f" (e.g. '{base / '10_ohwx person'}') or point --{flag} at the parent folder"
            )
        # Sorted, unlike sd-scripts (raw listing order): the same folders must give the
        # same items on every machine, or "same config, same LoRA" cannot hold.
        for name in sorted(os.listdir(base)):
            sub = base / name
            if not sub.is_dir() or name.startswith("."):
                continue
            parsed = parse_folder_name(name)
            if parsed is None:
                problems.append(
                    f"{sub}: folder name has no repeat count; rename it '<repeats>_<class tokens>', e.g. '10_{name.partition('_')[2] or name}'"
                )
            elif parsed[0] < 1:
                problems.append(f"{sub}: repeat count {parsed[0]} is below 1; rename it with 1 or more repeats, e.g. '1_{parsed[1]}'")
            else:
                subsets.append(dataclasses.replace(template, image_dir=sub, num_repeats=parsed[0], is_reg=is_reg, class_tokens=parsed[1]))
    return subsets, problems


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by path like sd-scripts' glob_images (hidden files skipped)."""
    paths = [folder / n for n in os.listdir(folder) if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    paths = [p for p in paths if p.is_file()]
    return sorted(paths, key=str)


def check_image(path: Path, options: ImageOptions = ImageOptions()) -> tuple[Reso | None, str | None]:
    """(upright width, height), or a problem line: the pixel cap from the header, PIL verify, then a
    (draft-mode, so cheap for JPEG) full decode. The size is after EXIF orientation, as training reads it."""
    try:
        size = image_size(path, options.max_pixels)
    except DatasetError as exc:
        return None, exc.summary + "; " + "; ".join(p.split(": ", 1)[-1] for p in exc.problems)
    except Exception as exc:  # PIL raises many types for damaged files; we report each one
        return None, f"{path}: cannot read image ({type(exc).__name__}: {exc}); re-export it or delete it"
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            img.draft("RGB", (64, 64))  # JPEG decodes at 1/8 scale; truncation still raises
            img.load()
    except Exception as exc:  # PIL raises many types for damaged files; we report each one
        return None, f"{path}: cannot read image ({type(exc).__name__}: {exc}); re-export it or delete it"
    if size[0] < 1 or size[1] < 1:
        return None, f"{path}: image has size {size[0]}x{size[1]}; re-export it or delete it"
    return size, None


def read_caption(image_path: Path, extension: str) -> tuple[str | None, str | None]:
    """(first line of `<stem><extension>` or None when absent, problem line or None)."""
    cap_path = image_path.with_name(image_path.stem + extension)
    if not cap_path.is_file():
        return None, None
    try:
        text = cap_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"{cap_path}: caption is not UTF-8 (byte {exc.start}); re-save it as UTF-8"
    except OSError as exc:
        return None, f"{cap_path}: cannot read caption ({exc}); check its permissions"
    lines = text.splitlines()
    if not lines:
        return None, f"{cap_path}: caption file is empty; write a caption or delete the file to use the folder's class tokens"
    return lines[0].strip().lstrip("\ufeff"), None


def scan_subset(spec: SubsetSpec, progress: bool = True) -> tuple[list[ImageEntry], list[str]]:
    """Every usable image of one folder and a problem line for each unusable input."""

    folder = Path(spec.image_dir)
    if not folder.is_dir():
        return [], [f"{folder}: image folder does not exist; fix image_dir or create it"]
    paths = list_images(folder)
    if not paths:
        exts = ", ".join(IMAGE_EXTENSIONS)
        return [], [f"{folder}: folder has no images ({exts}); add images or remove the folder"]
    entries: list[ImageEntry] = []
    problems: list[str] = []
    for path in tqdm(paths, desc=f"checking {folder.name}", disable=not progress or len(paths) < PROGRESS_FROM, leave=False):
        size, problem = check_image(path, spec.image)
        caption, cap_problem = read_caption(path, spec.caption_extension)
        bad = [p for p in (problem, cap_problem) if p]
        if bad:
            problems.extend(bad)
            continue
        if caption is None:
            entries.append(ImageEntry(path, spec.class_tokens or "", "class_tokens", size))
        else:
            entries.append(ImageEntry(path, caption, "file", size))
    return entries, problems


def scan_datasets(
    specs: list[DatasetSpec], skip_bad_images: bool = False, earlier_problems: list[str] | None = None,
    progress: bool = True,
) -> DatasetDescription:
    """Scan every subset once; raise one DatasetError listing all problems unless `skip_bad_images`."""
    problems = list(earlier_problems or [])
    described: list[DescribedDataset] = []
    for spec in specs:
        subsets = []
        for sub in spec.subsets:
            images, sub_problems = scan_subset(sub, progress)
            problems.extend(sub_problems)
            if images:
                subsets.append(DescribedSubset(sub, images))
        described.append(DescribedDataset(spec, subsets))
    if problems and not skip_bad_images:
        raise DatasetError(
            f"{len(problems)} problem(s) in the dataset; fix them or pass --skip_bad_images to train on the rest",
            problems,
        )
    description = DatasetDescription([d for d in described if d.subsets], skipped=problems)
    if not any(not s.spec.is_reg for s in description.subsets()):
        raise DatasetError("no training images found", problems or ["add images to a '<repeats>_<class tokens>' folder"])
    return description
