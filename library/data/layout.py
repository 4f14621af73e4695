"""From scanned folders to items in buckets: registration, reg balancing, bucket assignment,
and the per-epoch batch order.

Registration order is sd-scripts': training images subset by subset, then the
reg images that balancing uses. Each bucket holds an item once per repeat. The
batch order of epoch `e` is a pure function of (seed, e): every bucket's items
are shuffled, cut into batches, and the batches of all buckets shuffled, so a
resumed run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from library.data.balance import balance_reg_repeats, batches_in_bucket
from library.data.buckets import BucketSelector, Reso, bucket_info
from library.data.folders import DescribedDataset, DescribedSubset, ImageEntry
from library.data.specs import DatasetSpec
from library.errors import DatasetError


@dataclass(frozen=True)
class LayoutItem:
    """One registered image: which subset, repeats after balancing, bucket and resize target."""

    image: ImageEntry
    subset_index: int
    repeats: int
    is_reg: bool
    bucket: Reso
    resized_size: Reso
    ar_error: float


@dataclass
class DatasetLayout:
    """One dataset after bucketing; `buckets` pairs each bucket size with item indices (one per repeat)."""

    spec: DatasetSpec
    subsets: list[DescribedSubset]
    items: list[LayoutItem]
    buckets: list[tuple[Reso, list[int]]]
    num_train_images: int
    num_reg_images: int

    @property
    def batch_count(self) -> int:
        return sum(batches_in_bucket(len(ids), self.spec.batch_size) for _, ids in self.buckets)

    @property
    def reg_items_used(self) -> int:
        return sum(it.repeats for it in self.items if it.is_reg)

    def bucket_info(self) -> dict | None:
        """sd-scripts' `ss_bucket_info` (only written when buckets are enabled)."""
        if not self.spec.geometry.enable_bucket:
            return None
        return bucket_info([(reso, len(ids)) for reso, ids in self.buckets], [it.ar_error for it in self.items])


@dataclass(frozen=True)
class BatchRef:
    """One batch of an epoch: dataset index, bucket size, item indices into that dataset's layout."""

    dataset: int
    bucket: Reso
    items: tuple[int, ...]


def build_layout(dataset: DescribedDataset) -> DatasetLayout:
    """Register images (train, then balanced reg), assign buckets, fill buckets with repeats."""
    selector = BucketSelector(dataset.spec.geometry)
    train: list[tuple[int, ImageEntry, int]] = []
    reg: list[tuple[int, ImageEntry, int]] = []
    for si, sub in enumerate(dataset.subsets):
        target = reg if sub.spec.is_reg else train
        target.extend((si, img, sub.spec.num_repeats) for img in sub.images)
    num_train = sum(r for _, _, r in train)
    num_reg = sum(r for _, _, r in reg)
    reg_repeats = balance_reg_repeats(num_train, [r for _, _, r in reg])
    registered = [(si, img, r, False) for si, img, r in train]
    registered += [(si, img, rr, True) for (si, img, _), rr in zip(reg, reg_repeats) if rr > 0]
    items, too_small = [], []
    for si, img, repeats, is_reg in registered:
        choice = selector.select(img.size)
        if choice.bucket[0] < 1 or choice.bucket[1] < 1:
            too_small.append(f"{img.path}: {img.size[0]}x{img.size[1]} is smaller than bucket_reso_steps; use a larger image or turn off bucket_no_upscale")
        items.append(LayoutItem(img, si, repeats, is_reg, choice.bucket, choice.resized_size, choice.ar_error))
    if too_small:
        raise DatasetError("images too small for any bucket", too_small)
    return DatasetLayout(dataset.spec, dataset.subsets, items, fill_buckets(items), num_train, num_reg)


def fill_buckets(items: list[LayoutItem]) -> list[tuple[Reso, list[int]]]:
    """Bucket sizes in sorted order, each with the item indices it holds (an index per repeat)."""
    by_reso: dict[Reso, list[int]] = {}
    for index, item in enumerate(items):
        by_reso.setdefault(item.bucket, []).extend([index] * item.repeats)
    return sorted(by_reso.items())


def epoch_batches(layouts: list[DatasetLayout], seed: int, epoch: int) -> list[BatchRef]:
    """The batches of `epoch` in training order; a pure function of (layouts, seed, epoch)."""
    rng = random.Random(f"lorasmith-batches:{seed}:{epoch}")
    batches: list[BatchRef] = []
    for di, layout in enumerate(layouts):
        bs = layout.spec.batch_size
        for reso, ids in layout.buckets:
            shuffled = list(ids)
            rng.shuffle(shuffled)
            batches.extend(BatchRef(di, reso, tuple(shuffled[i : i + bs])) for i in range(0, len(shuffled), bs))
    rng.shuffle(batches)
    return batches
