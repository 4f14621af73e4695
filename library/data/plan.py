"""The training plan users compute by hand before training, and the dataset metadata sd-scripts writes.

`make_plan` turns bucketed datasets into per-folder counts (images × repeats,
reg images used), items and batches per epoch, optimizer steps, and the
warnings a careful user would want; `format_plan` renders it as a table and
`TrainingPlan.to_dict()` gives the GUI and the progress file the same numbers.
`dataset_summary` gathers the facts behind the dataset-side `ss_*` fields
(`ss_dataset_dirs`, `ss_tag_frequency`, `ss_bucket_info`, ...); `dataset_metadata`
formats them with `library.lora.metadata.dataset_fields`, the same call every saved
LoRA goes through.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from library.data.advice import batch_remainder_warning, planned_steps, steps_range_warning, suggest_repeats
from library.data.balance import steps_per_epoch, total_steps
from library.data.captions import tag_counts
from library.data.layout import DatasetLayout
from library.lora.metadata import dataset_fields

FEW_IMAGES = 10
MAX_LISTED = 5


@dataclass(frozen=True)
class FolderRow:
    """One folder's line of the plan; for reg folders `items` counts what balancing uses."""

    dataset: int
    folder: str
    path: str
    is_reg: bool
    images: int
    repeats: int
    images_used: int
    items: int


@dataclass
class TrainingPlan:
    folders: list[FolderRow]
    train_items: int
    reg_items: int
    items_per_epoch: int
    batch_sizes: list[int]
    batches_per_epoch: int
    gradient_accumulation_steps: int
    steps_per_epoch: int
    epochs: int
    total_steps: int
    buckets: list[dict]
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    held_out_images: int = 0  # images kept out of training for the validation loss (--validation_split)
    ema: dict | None = None  # {"decay", "update_every", "warmup"} with --ema_decay: an EMA file beside each LoRA file

    def to_dict(self) -> dict:
        return asdict(self)


def folder_rows(layouts: list[DatasetLayout]) -> list[FolderRow]:
    rows = []
    for di, layout in enumerate(layouts):
        for si, sub in enumerate(layout.subsets):
            used = [it for it in layout.items if it.subset_index == si]
            rows.append(
                FolderRow(di, sub.spec.name, str(sub.spec.image_dir), sub.spec.is_reg, len(sub.images),
                          sub.spec.num_repeats, len(used), sum(it.repeats for it in used))
            )
    return rows


def plan_warnings(layouts: list[DatasetLayout], steps_in_epoch: int) -> list[str]:
    """What a careful user checks by hand: few images, over-used reg images, small or non-square images."""
    warnings = []
    train_images = sum(len(s.images) for lay in layouts for s in lay.subsets if not s.spec.is_reg)
    if train_images < FEW_IMAGES:
        warnings.append(f"only {train_images} training images; {FEW_IMAGES} or more (15–50 is typical) give a LoRA that generalises")
    reg_images = sum(len(s.images) for lay in layouts for s in lay.subsets if s.spec.is_reg)
    if reg_images and steps_in_epoch > reg_images:
        warnings.append(
            f"{steps_in_epoch} steps per epoch but only {reg_images} regularization images: each is repeated many times; add more reg images"
        )
    items = [it for lay in layouts for it in lay.items]
    small = [it for it in items if it.resized_size[0] > it.image.size[0] or it.resized_size[1] > it.image.size[1]]
    if small:
        warnings.append(f"{len(small)} image(s) smaller than their training size will be upscaled (blurry): {_listing(small)}")
    if any(not lay.spec.geometry.enable_bucket for lay in layouts):
        cropped = [it for lay in layouts if not lay.spec.geometry.enable_bucket for it in lay.items
                   if it.image.size[0] * lay.spec.resolution[1] != it.image.size[1] * lay.spec.resolution[0]]
        if cropped:
            warnings.append(
                f"{len(cropped)} image(s) do not have the training aspect ratio and will be centre-cropped "
                f"(use --enable_bucket to keep the whole picture): {_listing(cropped)}"
            )
    return warnings


def arithmetic_warnings(layouts: list[DatasetLayout], *, total: int, epochs: int, per_epoch: int, accumulation: int,
                        optimizer_type: str | None, target_steps: int | None, epochs_fixed: bool) -> list[str]:
    """Batch remainder, total training against the guide's range, and the repeats for `target_steps` (library.data.advice)."""
    out = []
    train_items = sum(lay.num_train_images for lay in layouts)
    for lay in layouts:
        train = [s for s in lay.subsets if not s.spec.is_reg]
        if len(train) == 1:
            factor = 2 if lay.reg_items_used else 1
            w = batch_remainder_warning(len(train[0].images), train[0].spec.num_repeats, factor, lay.spec.batch_size)
            out += [w] if w else []
    if per_epoch:
        w = steps_range_warning(round(train_items * total / per_epoch), optimizer_type)
        out += [w] if w else []
    if target_steps:
        out.append(_repeats_advice(layouts, target_steps, epochs, accumulation, epochs_fixed))
    return out


def _repeats_advice(layouts: list[DatasetLayout], target: int, epochs: int, accumulation: int, epochs_fixed: bool) -> str:
    if not epochs_fixed or len(layouts) != 1:
        return (f"target_steps {target}: set max_train_epochs (with max_train_steps the step count is fixed) and use one "
                "dataset to get a repeats suggestion")
    lay = layouts[0]
    train = [s for s in lay.subsets if not s.spec.is_reg]
    factor, bs = (2 if lay.reg_items_used else 1), lay.spec.batch_size
    new = suggest_repeats(target, epochs, [s.spec.num_repeats for s in train], [len(s.images) for s in train], bs, accumulation, factor)
    items = sum(len(s.images) * r for s, r in zip(train, new))
    folders = ", ".join(f"{s.spec.name}: {r}" for s, r in zip(train, new))
    return (f"for about {target} optimizer steps over {epochs} epochs use repeats {folders} "
            f"(gives {planned_steps(epochs, items, factor, bs, accumulation)} steps before bucket remainders)")


def _listing(items) -> str:
    names = [f"{it.image.path.name} ({it.image.size[0]}x{it.image.size[1]})" for it in items[:MAX_LISTED]]
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(names) + more


def make_plan(
    layouts: list[DatasetLayout],
    *,
    gradient_accumulation_steps: int = 1,
    max_train_epochs: int | None = None,
    max_train_steps: int = 1600,
    num_processes: int = 1,
    skipped: list[str] | None = None,
    optimizer_type: str | None = None,
    target_steps: int | None = None,
) -> TrainingPlan:
    """Counts, step math and warnings for the given bucketed datasets."""
    batches = sum(lay.batch_count for lay in layouts)
    per_epoch = steps_per_epoch(batches, gradient_accumulation_steps, num_processes)
    steps, epochs = total_steps(per_epoch, max_train_epochs, max_train_steps)
    train_items = sum(lay.num_train_images for lay in layouts)
    reg_items = sum(lay.reg_items_used for lay in layouts)
    buckets = [{"dataset": di, "resolution": list(reso), "count": len(ids)}
               for di, lay in enumerate(layouts) for reso, ids in lay.buckets]
    return TrainingPlan(
        folders=folder_rows(layouts), train_items=train_items, reg_items=reg_items,
        items_per_epoch=train_items + reg_items, batch_sizes=[lay.spec.batch_size for lay in layouts],
        batches_per_epoch=batches, gradient_accumulation_steps=gradient_accumulation_steps,
        steps_per_epoch=per_epoch, epochs=epochs, total_steps=steps, buckets=buckets,
        warnings=plan_warnings(layouts, per_epoch) + arithmetic_warnings(
            layouts, total=steps, epochs=epochs, per_epoch=per_epoch, accumulation=gradient_accumulation_steps,
            optimizer_type=optimizer_type, target_steps=target_steps, epochs_fixed=bool(max_train_epochs)),
        skipped=list(skipped or []),
    )


def format_plan(plan: TrainingPlan) -> str:
    """The plan as a fixed-width table plus totals, warnings and skipped inputs."""
    header = f"{'folder':<32} {'kind':<5} {'images':>6} {'repeats':>7} {'used':>5} {'items':>6}"
    lines = ["Training plan", header, "-" * len(header)]
    for row in plan.folders:
        kind = "reg" if row.is_reg else "train"
        lines.append(f"{row.folder[:32]:<32} {kind:<5} {row.images:>6} {row.repeats:>7} {row.images_used:>5} {row.items:>6}")
    lines.append("-" * len(header))
    bs = "/".join(str(b) for b in plan.batch_sizes)
    lines += [
        f"training items per epoch (images x repeats): {plan.train_items}",
        f"regularization items per epoch:              {plan.reg_items}",
        f"items per epoch:                             {plan.items_per_epoch}",
        f"batch size:                                  {bs}",
        f"batches per epoch:                           {plan.batches_per_epoch}",
        f"gradient accumulation steps:                 {plan.gradient_accumulation_steps}",
        f"optimizer steps per epoch:                   {plan.steps_per_epoch}",
        f"epochs:                                      {plan.epochs}",
        f"total optimizer steps:                       {plan.total_steps}",
    ]
    if plan.held_out_images:
        lines.append(f"validation images held out (not trained on): {plan.held_out_images}")
    if plan.ema:
        e = plan.ema
        lines.append(f"EMA of the LoRA weights:                     decay {e['decay']:g}, every {e['update_every']} step(s)"
                     f"{', warm-up min(d, (1+t)/(10+t))' if e['warmup'] else ''}; saved as <name>-ema beside each file")
    if plan.buckets:
        lines.append("buckets: " + ", ".join(f"{b['resolution'][0]}x{b['resolution'][1]}: {b['count']}" for b in plan.buckets))
    lines += [f"warning: {w}" for w in plan.warnings]
    lines += [f"skipped: {s}" for s in plan.skipped]
    return "\n".join(lines)


def dataset_dirs_info(layouts: list[DatasetLayout]) -> tuple[dict, dict]:
    """(`ss_dataset_dirs`, `ss_reg_dataset_dirs`): folder name → n_repeats (as named) and img_count."""
    train: dict = {}
    reg: dict = {}
    for lay in layouts:
        for sub in lay.subsets:
            target = reg if sub.spec.is_reg else train
            key, n = sub.spec.name, 2
            while key in target:
                key, n = f"{sub.spec.name} ({n})", n + 1
            target[key] = {"n_repeats": sub.spec.num_repeats, "img_count": len(sub.images)}
    return train, reg


def tag_frequency(layouts: list[DatasetLayout]) -> dict:
    """`ss_tag_frequency`: folder name → lower-cased tag counts over its raw captions (reg folders included)."""
    result: dict[str, dict[str, int]] = {}
    for lay in layouts:
        for sub in lay.subsets:
            counts = result.setdefault(sub.spec.name, {})
            for tag, n in tag_counts([img.caption for img in sub.images]).items():
                counts[tag] = counts.get(tag, 0) + n
    return result


def bucket_info(layouts: list[DatasetLayout]) -> dict | None:
    """`ss_bucket_info` of the first dataset (sd-scripts writes one dataset's info at top level)."""
    return layouts[0].bucket_info() if layouts else None


def dataset_summary(layouts: list[DatasetLayout]) -> dict[str, Any]:
    """The plain facts behind the dataset-side `ss_*` fields, as sd-scripts counts them.

    Images count with repeats; reg images with their folders' repeats, not the balanced
    number used per epoch. Bucket and resolution settings are the first dataset's.
    """
    train_dirs, reg_dirs = dataset_dirs_info(layouts)
    g = layouts[0].spec.geometry if layouts else None
    return {
        "num_train_images": sum(lay.num_train_images for lay in layouts),
        "num_reg_images": sum(lay.num_reg_images for lay in layouts),
        "num_validation_images": 0,
        "num_batches_per_epoch": sum(lay.batch_count for lay in layouts),
        "resolution": tuple(g.resolution) if g else None,
        "enable_bucket": bool(g and g.enable_bucket),
        "min_bucket_reso": g.min_bucket_reso if g else None,
        "max_bucket_reso": g.max_bucket_reso if g else None,
        "bucket_no_upscale": bool(g and g.bucket_no_upscale),
        "dataset_dirs": train_dirs,
        "reg_dataset_dirs": reg_dirs,
        "tag_frequency": tag_frequency(layouts),
        "bucket_info": bucket_info(layouts),
    }


def dataset_metadata(layouts: list[DatasetLayout]) -> dict[str, str]:
    """The dataset-side `ss_*` strings a LoRA trained on `layouts` carries (one formatter: lora's)."""
    return dataset_fields(dataset_summary(layouts))
