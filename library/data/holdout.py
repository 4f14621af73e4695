"""`--validation_split`: hold some training images out of training, to measure a validation loss.

Facts from sd-scripts (`train_util.split_train_val`, `DreamBoothDataset.__init__`):
the split is made per image folder (subset); the folder's images, in path order,
are shuffled with Python's `random` seeded by `validation_seed` (the training
seed when unset); the first `ceil(n * (1 - split))` are trained on, the rest held
out; regularization folders are never split and never validated on; held-out
images are seen once per validation (repeats 1). sd-scripts takes the validation
part as the last `round(n * split)` images, which can overlap the training part
(n=3, split=0.5 shares one image); here it is exactly the complement, so a
held-out image is never trained on. A split outside [0, 1) or one that leaves a
folder with no training image is an error (sd-scripts warns or trains on nothing).
"""
from __future__ import annotations

import dataclasses
import math
import random

from library.data.folders import DatasetDescription, DescribedDataset, DescribedSubset, ImageEntry


def split_images(images: list[ImageEntry], fraction: float, seed: int) -> tuple[list[ImageEntry], list[ImageEntry]]:
    """(trained, held out) of one folder's images: sd-scripts' seeded shuffle, then a cut at ceil(n·(1−fraction))."""
    if fraction <= 0.0 or not images:
        return list(images), []
    shuffled = list(images)
    random.Random(seed).shuffle(shuffled)
    cut = math.ceil(len(shuffled) * (1.0 - fraction))
    return shuffled[:cut], shuffled[cut:]


def fraction_problem(fraction: float, where: str = "validation_split") -> str | None:
    """The problem line for a split that is not in [0, 1) (it must leave something to train on), else None."""
    if 0.0 <= fraction < 1.0:
        return None
    return f"{where}: {fraction} is not a fraction from 0 up to below 1; e.g. 0.1 holds out 10% of each folder's images, 0 none"


def split_description(description: DatasetDescription, default_seed: int | None) -> tuple[DatasetDescription, DatasetDescription | None]:
    """(training description, validation description or None) with each dataset's own split and seed."""
    train, held = [], []
    for di, ds in enumerate(description.datasets, 1):
        fraction = ds.spec.validation_split
        seed = ds.spec.validation_seed if ds.spec.validation_seed is not None else (default_seed or 0)
        kept, out = [], []
        for sub in ds.subsets:
            if sub.spec.is_reg or fraction <= 0.0:
                kept.append(sub)
                continue
            trained, held_out = split_images(sub.images, fraction, seed)
            kept.append(DescribedSubset(sub.spec, trained))
            if held_out:
                out.append(DescribedSubset(dataclasses.replace(sub.spec, num_repeats=1), held_out))
        train.append(DescribedDataset(ds.spec, kept))
        if out:
            held.append(DescribedDataset(ds.spec, out))
    validation = DatasetDescription(held, []) if held else None
    return DatasetDescription(train, list(description.skipped)), validation


def held_out_count(validation: DatasetDescription | None) -> int:
    return 0 if validation is None else sum(len(s.images) for d in validation.datasets for s in d.subsets)
