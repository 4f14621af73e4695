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
from pathlib import Path

from dataset_tools.images import scan_folder
from library.config import TrainConfig
from library.data.buckets import BucketGeometry
from library.data.folders import scan_datasets, subsets_from_dirs
from library.data.layout import DatasetLayout, build_layout
from library.data.plan import TrainingPlan, format_plan, make_plan
from library.data.specs import DatasetSpec, SubsetSpec, parse_resolution

# The TrainConfig fields the report reads (its CLI flags are generated from these).
REPORT_OPTIONS = (
    "reg_data_dir", "resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
    "bucket_no_upscale", "train_batch_size", "max_train_epochs", "max_train_steps",
    "gradient_accumulation_steps", "caption_extension", "prior_loss_weight",
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


def dataset_spec(cfg: TrainConfig) -> tuple[DatasetSpec, list[str]]:
    """The one dataset `--train_data_dir`/`--reg_data_dir` describe, plus folder-name problems."""
    template = SubsetSpec(image_dir=Path("."), caption_extension=cfg.caption_extension)
    subsets, problems = subsets_from_dirs(cfg.train_data_dir, cfg.reg_data_dir, template)
    geometry = BucketGeometry(
        resolution=parse_resolution(cfg.resolution), enable_bucket=cfg.enable_bucket,
        min_bucket_reso=cfg.min_bucket_reso, max_bucket_reso=cfg.max_bucket_reso,
        bucket_reso_steps=cfg.bucket_reso_steps, bucket_no_upscale=cfg.bucket_no_upscale,
    )
    spec = DatasetSpec(tuple(subsets), geometry, cfg.train_batch_size, cfg.prior_loss_weight)
    return spec, problems


def _image_rows(layout: DatasetLayout) -> list[ImageRow]:
    placed = {(it.subset_index, it.image.path): it for it in layout.items}
    short = min(layout.spec.resolution)
    rows = []
    for si, sub in enumerate(layout.subsets):
        for img in sub.images:
            it = placed.get((si, img.path))
            w, h = img.size
            rows.append(ImageRow(
                sub.spec.name, img.path.name, w, h, round(w / h, 4), min(w, h) < short, img.caption_source,
                list(it.bucket) if it else None, list(it.resized_size) if it else None, it.repeats if it else 0,
            ))
    return rows


def _folder_summary(layout: DatasetLayout, si: int, rows: list[ImageRow], caption_extension: str) -> FolderSummary:
    sub = layout.subsets[si]
    mine = [r for r in rows if r.folder == sub.spec.name]
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
        out.append(f"{images} training images; the guide uses {lo}–{hi}")
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
    """Scan, bucket and plan like the trainer; unreadable inputs are listed, not fatal."""
    cfg = dataclasses.replace(cfg, train_data_dir=str(train_data_dir))
    spec, problems = dataset_spec(cfg)
    description = scan_datasets([spec], skip_bad_images=True, earlier_problems=problems)
    layouts = [build_layout(d) for d in description.datasets]
    plan = make_plan(layouts, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                     max_train_epochs=cfg.max_train_epochs, max_train_steps=cfg.max_train_steps,
                     skipped=description.skipped)
    rows = [r for lay in layouts for r in _image_rows(lay)]
    folders = [_folder_summary(lay, si, rows, cfg.caption_extension) for lay in layouts for si in range(len(lay.subsets))]
    return DatasetReport(list(spec.resolution), folders, rows, plan, guide_warnings(folders))


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
