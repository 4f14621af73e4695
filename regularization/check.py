"""Does a regularization folder balance a training folder? Answered in sd-scripts' terms.

sd-scripts (and library.data, which the trainer uses) registers reg images in
order with their folder's repeats until the reg image-repeats reach the
training image-repeats: images not reached are unused; when one pass is not
enough, further passes add one repeat per image. This module runs that same
balancing (library.data.prepare_data) and says which reg images are used, which
are repeated beyond their folder's repeats, and which are unused.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field

from library.config import default_config
from library.data.prepare import prepare_data


@dataclass
class RegImageUse:
    folder: str
    file: str
    folder_repeats: int
    repeats: int  # after balancing; 0 = unused


@dataclass
class RegBalance:
    train_items: int  # training images × repeats per epoch
    reg_images: int
    reg_items: int  # reg image-repeats the trainer uses per epoch
    used: int
    unused: int
    repeated: int  # images used more often than their folder's repeats
    max_repeats: int
    balanced: bool
    verdict: str
    images: list[RegImageUse] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _verdict(train_items: int, reg_images: int, unused: int, repeated: int, max_repeats: int) -> str:
    if reg_images == 0:
        return "no regularization images: training runs without prior preservation"
    if repeated:
        return (f"too few: {reg_images} reg images for {train_items} training image-repeats, so {repeated} are "
                f"used up to {max_repeats} times per epoch; add {train_items - reg_images} images to use each once")
    if unused:
        return f"balanced: {reg_images - unused} reg images are used once per epoch, {unused} are never used"
    return f"balanced: all {reg_images} reg images are used, none repeated"


def check_balance(train_data_dir: str | os.PathLike[str], reg_data_dir: str | os.PathLike[str],
                  caption_extension: str | None = None) -> RegBalance:
    """Balance `reg_data_dir` against `train_data_dir` exactly as training would."""
    cfg = dataclasses.replace(default_config(), train_data_dir=str(train_data_dir), reg_data_dir=str(reg_data_dir),
                              skip_bad_images=True)
    if caption_extension:
        cfg = dataclasses.replace(cfg, caption_extension=caption_extension)
    prepared = prepare_data(cfg)
    images: list[RegImageUse] = []
    for layout in prepared.layouts:
        used = {(it.subset_index, it.image.path): it.repeats for it in layout.items if it.is_reg}
        for si, sub in enumerate(layout.subsets):
            if sub.spec.is_reg:
                images += [RegImageUse(sub.spec.name, img.path.name, sub.spec.num_repeats,
                                       used.get((si, img.path), 0)) for img in sub.images]
    train_items = prepared.plan.train_items
    unused = sum(i.repeats == 0 for i in images)
    repeated = sum(i.repeats > i.folder_repeats for i in images)
    max_repeats = max((i.repeats for i in images), default=0)
    reg_items = sum(i.repeats for i in images)
    return RegBalance(
        train_items, len(images), reg_items, len(images) - unused, unused, repeated, max_repeats,
        bool(images) and repeated == 0, _verdict(train_items, len(images), unused, repeated, max_repeats),
        images, list(prepared.description.skipped),
    )


def format_balance(balance: RegBalance) -> str:
    lines = [
        f"training image-repeats per epoch: {balance.train_items}",
        f"regularization images:            {balance.reg_images}",
        f"reg image-repeats used per epoch: {balance.reg_items}",
        f"used / unused / repeated:         {balance.used} / {balance.unused} / {balance.repeated}",
        balance.verdict,
    ]
    lines += [f"skipped: {s}" for s in balance.skipped]
    return "\n".join(lines)
