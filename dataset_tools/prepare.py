"""Lay out a training folder the way sd-scripts reads it (kohya_ss's "folder preparation").

    dest/img/<repeats>_<instance prompt> <class prompt>/   training images + captions
    dest/reg/<repeats>_<class prompt>/                     regularization images (optional)
    dest/log/                                               TensorBoard logs
    dest/model/                                             the LoRA files

Then train with ``--train_data_dir dest/img --reg_data_dir dest/reg
--output_dir dest/model --logging_dir dest/log``. Images and their caption
files are copied (never moved); unreadable images are left out and listed.
The destination may not be, contain, or sit inside a source folder, so a run
can never copy a folder into itself or overwrite the originals.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dataset_tools.images import ToolRun, refuse_overlap, scan_folder, start_run
from library.data.folders import check_image
from library.errors import DatasetError
from library.fileio import atomic_path

CAPTION_EXTENSIONS = (".txt", ".caption")


@dataclass
class PreparedFolders:
    """Where everything went, and what each copy run did."""

    img_dir: Path
    reg_dir: Path | None
    log_dir: Path
    model_dir: Path
    runs: dict[str, ToolRun] = field(default_factory=dict)

    def train_flags(self) -> str:
        flags = f"--train_data_dir {self.img_dir.parent} --output_dir {self.model_dir} --logging_dir {self.log_dir}"
        if self.reg_dir is not None:
            flags += f" --reg_data_dir {self.reg_dir.parent}"
        return flags


def _check_name(value: str, what: str, problems: list[str]) -> None:
    if not value.strip():
        problems.append(f"{what} is empty; give the words to train on, e.g. 'ohwx' for the instance, 'woman' for the class")
    elif any(sep in value for sep in ("/", "\\")) or value.strip() in (".", ".."):
        problems.append(f"{what} {value!r} cannot be part of a folder name; remove slashes")


def _validate(instance_prompt: str, class_prompt: str, train_images: Path, train_repeats: int,
              reg_images: Path | None, reg_repeats: int) -> None:
    problems: list[str] = []
    _check_name(instance_prompt, "instance prompt", problems)
    _check_name(class_prompt, "class prompt", problems)
    for repeats, what in ((train_repeats, "training repeats"), (reg_repeats, "regularization repeats")):
        if repeats < 1:
            problems.append(f"{what} is {repeats}; use 1 or more")
    for folder, what in ((train_images, "training images folder"), (reg_images, "regularization images folder")):
        if folder is not None and not folder.is_dir():
            problems.append(f"{what} {folder} does not exist")
    if problems:
        raise DatasetError("cannot prepare the training folders", problems)


def copy_dataset_folder(src: Path, dst: Path, overwrite: bool = False, progress: bool = True) -> ToolRun:
    """Copy readable images and their caption files from `src` into `dst`; list the rest."""
    scan = scan_folder(src)
    run = start_run(scan, list_non_images=False)
    stems = {p.stem for p in scan.images}
    captions = [p for p in scan.non_images if p.suffix.lower() in CAPTION_EXTENSIONS and p.stem in stems]
    run.non_images = [p for p in scan.non_images if p not in captions]
    unreadable_stems = set()
    for image in tqdm(scan.images, desc=f"copy {dst.name}", unit="img", disable=not progress):
        _size, problem = check_image(image)
        if problem:
            run.unreadable.append(problem)
            unreadable_stems.add(image.stem)
            continue
        _copy(image, dst / image.name, overwrite, run)
    for caption in captions:
        if caption.stem not in unreadable_stems:
            _copy(caption, dst / caption.name, overwrite, run)
    return run


def _copy(source: Path, dest: Path, overwrite: bool, run: ToolRun) -> None:
    if dest.exists() and not overwrite and dest.stat().st_size == source.stat().st_size:
        run.skipped_existing.append(dest)
        return
    if dest.exists() and not overwrite:
        raise DatasetError(f"{dest} already exists and differs from {source}",
                           ["pass --overwrite to replace it, or choose an empty destination"])
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)
    run.written.append(dest)


def prepare_training_folders(instance_prompt: str, class_prompt: str, train_images: str | os.PathLike[str],
                             dest: str | os.PathLike[str], train_repeats: int = 40,
                             reg_images: str | os.PathLike[str] | None = None, reg_repeats: int = 1,
                             overwrite: bool = False, progress: bool = True) -> PreparedFolders:
    """Create dest/img, dest/reg, dest/log, dest/model and copy the images in (see the module docstring)."""
    train_path, dest_path = Path(train_images), Path(dest)
    reg_path = Path(reg_images) if reg_images else None
    _validate(instance_prompt, class_prompt, train_path, train_repeats, reg_path, reg_repeats)
    refuse_overlap([p for p in (train_path, reg_path) if p is not None], dest_path)
    img_dir = dest_path / "img" / f"{train_repeats}_{instance_prompt.strip()} {class_prompt.strip()}"
    reg_dir = dest_path / "reg" / f"{reg_repeats}_{class_prompt.strip()}" if reg_path else None
    result = PreparedFolders(img_dir, reg_dir, dest_path / "log", dest_path / "model")
    for folder in (img_dir, reg_dir, result.log_dir, result.model_dir):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    result.runs["img"] = copy_dataset_folder(train_path, img_dir, overwrite, progress)
    if reg_path is not None and reg_dir is not None:
        result.runs["reg"] = copy_dataset_folder(reg_path, reg_dir, overwrite, progress)
    return result
