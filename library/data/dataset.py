"""The torch side: a dataset whose items are whole batches, and the DataLoader around it.

Each index is one batch of the current epoch (all items from one bucket, as in
sd-scripts). Everything random — the batch order, flips, crops, colour and
caption shuffles — derives from (seed, epoch, batch index, position), so any
number of DataLoader workers, and a run resumed mid-epoch, give the same
batches. Epochs count from 1, as sd-scripts' `current_epoch` (which
`caption_dropout_every_n_epochs` tests). The sampler sends (epoch, index) pairs
to the workers, so persistent workers follow `set_epoch` too.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler

from library.data.captions import process_caption
from library.data.images import item_pixels
from library.data.latent_cache import CachedLatents
from library.data.masks import MaskSource, item_pixels_and_mask
from library.data.layout import BatchRef, DatasetLayout, LayoutItem, epoch_batches
from library.data.specs import SubsetSpec
from library.data.text import tokenize_captions


@dataclass
class EpochState:
    """What a saved training state needs to restore the data order exactly."""

    seed: int
    epoch: int = 1
    start_batch: int = 0


class LoraDataset(torch.utils.data.Dataset):
    """Batches of pixels (or cached latents), captions, token ids and loss weights."""

    def __init__(
        self,
        layouts: list[DatasetLayout],
        *,
        seed: int,
        tokenizer=None,
        max_token_length: int | None = None,
        latents: dict[tuple[int, int], CachedLatents] | None = None,
        text_encoder_outputs: dict[str, torch.Tensor] | None = None,
        masks: dict[tuple[int, int], MaskSource] | None = None,
    ) -> None:
        self.layouts = layouts
        self.state = EpochState(seed)
        self.tokenizer = tokenizer
        self.max_token_length = max_token_length
        self.latents = latents
        self.text_encoder_outputs = text_encoder_outputs
        self.masks = masks  # with masked_loss: (dataset, item) → mask source; batches then carry "masks"
        self._batch_count = sum(lay.batch_count for lay in layouts)
        self._order: tuple[int, list[BatchRef]] | None = None

    def __len__(self) -> int:
        return self._batch_count

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (from 1) whose order iteration follows, starting at `start_batch` (resume)."""
        self.state.epoch = epoch
        self.state.start_batch = start_batch

    def state_dict(self) -> dict:
        return {"seed": self.state.seed, "epoch": self.state.epoch, "start_batch": self.state.start_batch}

    def load_state_dict(self, state: dict) -> None:
        self.state = EpochState(int(state["seed"]), int(state["epoch"]), int(state.get("start_batch", 0)))

    def batches(self, epoch: int) -> list[BatchRef]:
        """The batch order of `epoch` (memoised for the last epoch asked)."""
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_batches(self.layouts, self.state.seed, epoch))
        return self._order[1]

    def __getitem__(self, index) -> dict:
        epoch, i = index if isinstance(index, tuple) else (self.state.epoch, index)
        ref = self.batches(epoch)[i]
        layout = self.layouts[ref.dataset]
        items = [layout.items[k] for k in ref.items]
        rngs = [random.Random(f"lorasmith-item:{self.state.seed}:{epoch}:{i}:{j}") for j in range(len(items))]
        subsets = [layout.subsets[it.subset_index].spec for it in items]
        flips = [s.flip_aug and rng.random() < 0.5 for s, rng in zip(subsets, rngs)]
        batch = {"epoch": epoch, "index": i, "bucket": ref.bucket, "flipped": flips}
        batch.update(self._visuals(ref, items, subsets, flips, rngs))
        captions = [process_caption(it.image.caption, s.captions, epoch, rng) for it, s, rng in zip(items, subsets, rngs)]
        batch["captions"] = captions
        batch["input_ids"] = tokenize_captions(self.tokenizer, captions, self.max_token_length) if self.tokenizer else None
        batch["text_encoder_outputs"] = (
            torch.stack([self.text_encoder_outputs[c] for c in captions]) if self.text_encoder_outputs is not None else None
        )
        weight = layout.spec.prior_loss_weight
        batch["loss_weights"] = torch.tensor([weight if it.is_reg else 1.0 for it in items], dtype=torch.float32)
        batch["is_reg"] = [it.is_reg for it in items]
        batch["image_paths"] = [str(it.image.path) for it in items]
        batch["original_sizes"] = [tuple(it.image.size) for it in items]  # (w, h) before resizing: SDXL's size ids
        return batch

    def _visuals(self, ref: BatchRef, items: list[LayoutItem], subsets: list[SubsetSpec], flips, rngs) -> dict:
        if self.latents is not None:
            cached = [self.latents[(ref.dataset, k)] for k in ref.items]
            lat = [c.flipped if f else c.latents for c, f in zip(cached, flips)]
            out = {"latents": torch.stack(lat), "images": None}
            if self.masks is not None:
                out["masks"] = torch.stack([_cached_mask(c, f, ref.bucket) for c, f in zip(cached, flips)])
            return out
        if self.masks is not None:
            pairs = [
                item_pixels_and_mask(it.image.path, self.masks[(ref.dataset, k)], it.image.size, it.bucket, it.resized_size,
                                     random_crop=s.random_crop, use_color_aug=s.color_aug, flip=f, rng=rng,
                                     options=s.image)
                for k, it, s, f, rng in zip(ref.items, items, subsets, flips, rngs)
            ]
            return {"latents": None, "images": torch.stack([p for p, _ in pairs]), "masks": torch.stack([m for _, m in pairs])}
        images = [
            item_pixels(it.image.path, it.bucket, it.resized_size, random_crop=s.random_crop,
                        use_color_aug=s.color_aug, flip=f, rng=rng, options=s.image)
            for it, s, f, rng in zip(items, subsets, flips, rngs)
        ]
        return {"latents": None, "images": torch.stack(images)}

    def fixed_captions(self) -> list[str]:
        """Every item's caption as the text encoder will see it, for captions that never change."""
        rng = random.Random(0)
        return [
            process_caption(it.image.caption, lay.subsets[it.subset_index].spec.captions, 1, rng)
            for lay in self.layouts for it in lay.items
        ]


def _cached_mask(cached: CachedLatents, flipped: bool, bucket) -> torch.Tensor:
    """(1, H, W) float mask in [0, 1] of a cached item (all ones when it has none), mirrored with its latents."""
    if cached.mask is None:
        return torch.ones((1, bucket[1], bucket[0]))
    mask = cached.mask.float() / 255.0
    return torch.flip(mask, dims=[-1]) if flipped else mask


class EpochSampler(Sampler):
    """Yields (epoch, batch index) pairs of the dataset's current epoch from its start batch."""

    def __init__(self, dataset: LoraDataset) -> None:
        self.dataset = dataset

    def __iter__(self):
        epoch, start = self.dataset.state.epoch, self.dataset.state.start_batch
        return iter([(epoch, i) for i in range(start, len(self.dataset))])

    def __len__(self) -> int:
        return len(self.dataset) - self.dataset.state.start_batch


def _as_is(batch: dict) -> dict:
    return batch


def make_dataloader(dataset: LoraDataset, num_workers: int = 0, persistent_workers: bool = False,
                    pin_memory: bool = False) -> DataLoader:
    """A DataLoader over whole batches; `persistent_workers` only applies with workers (as in torch).

    `pin_memory` hands out batches in page-locked memory, which a CUDA step copies without waiting.
    Workers are capped at the CPU count, as sd-scripts does: more only fork processes that fight for cores.
    """
    num_workers = min(num_workers, os.cpu_count() or 1)
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=EpochSampler(dataset),
        num_workers=num_workers,
        persistent_workers=bool(persistent_workers and num_workers > 0),
        collate_fn=_as_is,
        pin_memory=pin_memory,
    )
