"""Regularization balancing and step arithmetic, as sd-scripts computes them.

Balancing (fact from sd-scripts `DreamBoothDataset.__init__`): reg images are
registered in order with their folder's repeats until the reg count (with
repeats) reaches the training count (with repeats); reg images not reached are
unused; if one pass is not enough, further passes add one repeat per image,
round-robin, until the counts match. The first pass can overshoot when repeats
are above 1 (sd-scripts keeps the overshoot, and so do we).
"""
from __future__ import annotations

import math


def balance_reg_repeats(train_count: int, reg_repeats: list[int]) -> list[int]:
    """Repeats each reg image ends up with (0 = unused), given the training count with repeats."""
    result = [0] * len(reg_repeats)
    if not reg_repeats or sum(reg_repeats) == 0:
        return result
    registered = 0
    first_pass = True
    while registered < train_count:
        for i, repeats in enumerate(reg_repeats):
            if first_pass:
                result[i] = repeats
                registered += repeats
            else:
                result[i] += 1
                registered += 1
            if registered >= train_count:
                break
        first_pass = False
    return result


def batches_in_bucket(count: int, batch_size: int) -> int:
    """A bucket of `count` items gives ceil(count / batch) batches; the last one may be short."""
    return math.ceil(count / batch_size)


def steps_per_epoch(batches_per_epoch: int, gradient_accumulation_steps: int = 1, num_processes: int = 1) -> int:
    """Optimizer steps in one epoch (sd-scripts: ceil(batches / processes / accumulation))."""
    return math.ceil(batches_per_epoch / num_processes / gradient_accumulation_steps)


def total_steps(
    steps_in_epoch: int, max_train_epochs: int | None, max_train_steps: int
) -> tuple[int, int]:
    """(total optimizer steps, epochs): epochs win over steps when given, as in sd-scripts."""
    if steps_in_epoch < 1:
        return 0, 0
    if max_train_epochs:
        return max_train_epochs * steps_in_epoch, max_train_epochs
    return max_train_steps, math.ceil(max_train_steps / steps_in_epoch)
