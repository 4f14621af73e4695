"""Dataset report: what the trainer will see in a training folder, before training.

The counts, bucket assignment, regularization balancing and step math are
library.data's (the same code the trainer runs); this module adds what a user
checks by eye — sizes, aspect ratios, images below the training resolution,
caption coverage, stray files — and the seed guide's advice as warnings:

- 10–50 training images;
- training images cropped to 1:1;
- at least images × repeats regularization images;
- 300–600 image-repeats per epoch (images × repeats, what the guide and the
  kohya_ss log call "steps" before batching: the guide's final run has 330);
- image-repeats per epoch not above the number of regularization images.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field

from dataset_tools.images import scan_folder
from library.config import TrainConfig
from library.data.layout import DatasetLayout
from library.data.plan import TrainingPlan, format_plan

# The TrainConfig fields the report reads (its CLI flags are generated from these).
REPORT_OPTIONS = (
    "reg_data_dir", "dataset_config", "resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
    "bucket_no_upscale", "train_batch_size", "max_train_epochs", "max_train_steps",
    "gradient_accumulation_steps", "caption_extension", "prior_loss_weight", "optimizer_type", "target_steps",
)
GUIDE_IMAGES = (10, 50)
GUIDE_ITEMS_PER_EPOCH = (300, 600)


@dataclass
class ImageRow:
    folder: str
    file: str
    width: int
    height: int
    aspect: float
    below_resolution: bool
    caption: str  # "file" or "class_tokens"
    bucket: list[int] | None  # None: a reg image balancing does not use
    resized: list[int] | None
    repeats: int


@dataclass
class FolderSummary:
    folder: str
    path: str
    is_reg: bool
    images: int
    repeats: int
    items: int
    captioned: int
    square: int
    portrait: int
    landscape: int
    below_resolution: int
    min_size: list[int]
    max_size: list[int]
    non_images: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


@dataclass
class DatasetReport:
    resolution: list[int]
    folders: list[FolderSummary]
    images: list[ImageRow]
    plan: TrainingPlan
    guide_warnings: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def _image_rows(layout: DatasetLayout, si: int) -> list[ImageRow]:
    """One row per image of subset `si`: size, caption source, and where the trainer puts it."""
    placed = {it.image.path: it for it in layout.items if it.subset_index == si}
    sub, short = layout.subsets[si], min(layout.spec.resolution)
    rows = []
    for img in sub.images:
        it = placed.get(img.path)
        w, h = img.size
        rows.append(ImageRow(
            sub.spec.name, img.path.name, w, h, round(w / h, 4), min(w, h) < short, img.caption_source,
            list(it.bucket) if it else None, list(it.resized_size) if it else None, it.repeats if it else 0,
        ))
    return rows


def _folder_summary(layout: DatasetLayout, si: int, mine: list[ImageRow], caption_extension: str) -> FolderSummary:
    sub = layout.subsets[si]
    scan = scan_folder(sub.spec.image_dir)
    stray = [p.name for p in scan.non_images if p.suffix.lower() not in (caption_extension, ".npz")]
    dups = [", ".join(p.name for p in paths) for paths in scan.duplicate_stems.values()]
    return FolderSummary(
        sub.spec.name, str(sub.spec.image_dir), sub.spec.is_reg, len(mine), sub.spec.num_repeats,
        sum(r.repeats for r in mine), sum(r.caption == "file" for r in mine),
        sum(r.width == r.height for r in mine), sum(r.width < r.height for r in mine),
        sum(r.width > r.height for r in mine), sum(r.below_resolution for r in mine),
        [min(r.width for r in mine), min(r.height for r in mine)],
        [max(r.width for r in mine), max(r.height for r in mine)], stray, dups,
    )


def guide_warnings(folders: list[FolderSummary]) -> list[str]:
    """The seed guide's dataset advice, checked against the counts."""
    train = [f for f in folders if not f.is_reg]
    reg = [f for f in folders if f.is_reg]
    images = sum(f.images for f in train)
    items = sum(f.images * f.repeats for f in train)
    reg_images = sum(f.images for f in reg)
    out = []
    lo, hi = GUIDE_IMAGES
    if not lo <= images <= hi:
        out.append(f"{images} training images; the guide uses {lo}–{hi} (the person-LoRA guide "
                   "InfluxOW/Stable-Diffusion-Text-To-Person: fewer overfit a few poses, more add little; add or drop photos)")
    not_square = sum(f.images - f.square for f in train)
    if not_square:
        out.append(f"{not_square} training image(s) are not 1:1; the guide crops to 1:1 (lorasmith dataset crop)")
    if not reg:
        out.append(f"no regularization images; the guide uses {items} (images × repeats) real class photos")
    elif reg_images < items:
        out.append(f"{reg_images} regularization images for {items} images × repeats; the guide uses at least {items}")
    lo, hi = GUIDE_ITEMS_PER_EPOCH
    if not lo <= items <= hi:
        out.append(f"{items} image-repeats per epoch (images × repeats); the guide aims for {lo}–{hi} (change repeats)")
    if reg and items > reg_images:
        out.append(f"{items} image-repeats per epoch is above the {reg_images} regularization images, so reg images repeat")
    return out


def build_report(train_data_dir: str | os.PathLike[str], cfg: TrainConfig) -> DatasetReport:
    """Scan, bucket and plan exactly as the trainer will (library.data.prepare_data).

    Unreadable images and badly named folders are listed in the plan's
    `skipped`, not fatal: the report is where a user finds them.
    """
    from library.data.prepare import prepare_data  # torch: only when a report runs, not for --help

    cfg = dataclasses.replace(cfg, train_data_dir=str(train_data_dir), skip_bad_images=True)
    prepared = prepare_data(cfg)
    rows, folders = [], []
    for lay in prepared.layouts:
        for si in range(len(lay.subsets)):
            mine = _image_rows(lay, si)
            rows += mine
            folders.append(_folder_summary(lay, si, mine, cfg.caption_extension))
    resolution = list(prepared.layouts[0].spec.resolution)
    return DatasetReport(resolution, folders, rows, prepared.plan, guide_warnings(folders))


def format_report(report: DatasetReport, show_images: bool = True) -> str:
    """Per-folder table, per-image buckets, then library.data's plan and the guide's advice."""
    res = f"{report.resolution[0]}x{report.resolution[1]}"
    head = f"{'folder':<28} {'kind':<5} {'imgs':>5} {'rep':>4} {'capt':>5} {'1:1':>4} {'port':>4} {'land':>4} {'<res':>5}  sizes"
    lines = [f"Dataset report (training resolution {res})", head, "-" * len(head)]
    for f in report.folders:
        kind = "reg" if f.is_reg else "train"
        sizes = f"{f.min_size[0]}x{f.min_size[1]} .. {f.max_size[0]}x{f.max_size[1]}"
        lines.append(f"{f.folder[:28]:<28} {kind:<5} {f.images:>5} {f.repeats:>4} {f.captioned:>5} {f.square:>4} "
                     f"{f.portrait:>4} {f.landscape:>4} {f.below_resolution:>5}  {sizes}")
        lines += [f"  not an image, ignored: {n}" for n in f.non_images]
        lines += [f"  same name in several formats: {d}" for d in f.duplicates]
    if show_images:
        lines += ["", "Buckets per image"]
        for r in report.images:
            where = f"{r.bucket[0]}x{r.bucket[1]} x{r.repeats}" if r.bucket else "unused (balancing needs fewer)"
            lines.append(f"  {r.folder}/{r.file}: {r.width}x{r.height} -> {where}")
    lines += ["", format_plan(report.plan)]
    lines += [f"guide: {w}" for w in report.guide_warnings]
    return "\n".join(lines)
