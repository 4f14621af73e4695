"""The images, captions and prompts a LoRA's epochs are scored on (library.scoring.scores).

From dataset folders (`lorasmith evaluate`): the same scan, buckets and held-out
split as training (library.data.prepare with the run's options), so with
`--validation_split` the score uses exactly the images training never saw, and
without it the training images at fixed noise. Images are fitted to their bucket
as training fits them (no random crop, no flip) and encoded once with the VAE's
mean latent; the latents are shared by every file and weight. Each batch keeps its
bucket and its images' original sizes, from which SDXL's size/crop ids are computed as
the trainer computes them.
"""
from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

from library.errors import DatasetError
from library.scoring.scores import DEFAULT_PRIOR_PROMPTS, EvalBatch, EvalSet


@torch.no_grad()
def encode_items(vae, items: Sequence[tuple[Path, tuple[int, int], tuple[int, int]]], batch: int = 8
                 ) -> dict[tuple[int, int], tuple[torch.Tensor, list[int]]]:
    """(path, bucket, resized size) → per bucket (scaled mean latents, item indices)."""
    from library.data.images import item_pixels

    dtype, device = next(vae.parameters()).dtype, next(vae.parameters()).device
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (_p, bucket, _r) in enumerate(items):
        groups[tuple(bucket)].append(i)
    out = {}
    for bucket, idx in groups.items():
        parts = []
        for k in range(0, len(idx), batch):
            pixels = torch.stack([item_pixels(items[i][0], items[i][1], items[i][2]) for i in idx[k:k + batch]])
            parts.append(vae.encode(pixels.to(device, dtype)).latent_dist.mean.float().cpu() * scale)
        out[bucket] = (torch.cat(parts), idx)
    return out


def batches_of(vae, items: Sequence[tuple[Path, tuple[int, int], tuple[int, int]]], captions: Sequence[str],
               original_sizes: Sequence[tuple[int, int]]) -> list[EvalBatch]:
    """One EvalBatch per bucket; `original_sizes` are the image files' (w, h), for SDXL's size ids."""
    encoded = encode_items(vae, items)
    return [EvalBatch(lat, [captions[i] for i in idx], [tuple(original_sizes[i]) for i in idx], bucket)
            for bucket, (lat, idx) in encoded.items()]


def eval_set_from_images(bundle, paths: Sequence[str | os.PathLike[str]], captions: Sequence[str], *,
                         resolution: int | None = None, class_prompt: str | None = None,
                         prior_prompts: tuple[str, ...] = DEFAULT_PRIOR_PROMPTS, instance_token: str | None = None,
                         seed: int = 0, source: str = "training images") -> EvalSet:
    """An evaluation set from image files of one size (resized to `resolution` when given)."""
    from PIL import Image

    if not paths:
        raise DatasetError("the evaluation set holds no image", ["give at least one image"])
    items, originals = [], []
    for p in paths:
        with Image.open(p) as im:
            size = (resolution, resolution) if resolution else im.size
            originals.append(tuple(im.size))
        items.append((Path(p), size, size))
    return EvalSet(batches_of(bundle.vae, items, list(captions), originals), class_prompt=class_prompt,
                   prior_prompts=prior_prompts, seed=seed, source=source, instance_token=instance_token,
                   image_paths=[str(p) for p in paths])


def eval_set_from_config(bundle, config, *, class_prompt: str | None = None,
                         prior_prompts: tuple[str, ...] = DEFAULT_PRIOR_PROMPTS, seed: int | None = None) -> EvalSet:
    """From a TrainConfig's folders: held-out images when it has a validation split, else the training images.

    Regularization folders give the reg drift. The class prompt defaults to the
    class word of the training folders (`10_ohwx woman` → "woman"), the trigger
    word to the rest of the folder name.
    """
    from library.data.prepare import prepare_data

    prepared = prepare_data(config)
    source = "training images"
    concept_layouts = prepared.layouts
    if prepared.validation is not None:
        concept_layouts, source = prepared.validation.layouts, "held-out images"
    concept, reg = _unique_items(concept_layouts, reg=False), _unique_items(prepared.layouts, reg=True)
    if not concept:
        raise DatasetError("no images to evaluate on", [f"{config.train_data_dir}: add images to a "
                           "'<repeats>_<trigger> <class>' folder"])
    tokens = [it.image.caption for it in concept if it.image.caption_source == "class_tokens"]
    folder_tokens = _folder_tokens(concept)
    trigger, derived_class = _split_tokens(folder_tokens)
    return EvalSet(_batches(bundle.vae, concept), class_prompt=class_prompt or derived_class or None,
                   prior_prompts=tuple(prior_prompts), reg=_batches(bundle.vae, reg) if reg else [],
                   seed=int(seed if seed is not None else (config.validation_seed or config.seed or 0)),
                   source=source, instance_token=trigger or (tokens[0].split()[0] if tokens else None),
                   image_paths=[str(it.image.path) for it in concept],
                   clip_skip=config.clip_skip, max_token_length=config.max_token_length,
                   zero_terminal_snr=bool(getattr(config, "zero_terminal_snr", False)))


def _batches(vae, items) -> list[EvalBatch]:
    return batches_of(vae, [_item(it) for it in items], [it.image.caption for it in items],
                      [tuple(it.image.size) for it in items])


def _item(it) -> tuple[Path, tuple[int, int], tuple[int, int]]:
    return (Path(it.image.path), tuple(it.bucket), tuple(it.resized_size))


def _unique_items(layouts, reg: bool) -> list:
    seen, out = set(), []
    for lay in layouts:
        for it in lay.items:
            if it.is_reg == reg and it.image.path not in seen:
                seen.add(it.image.path)
                out.append(it)
    return out


def _folder_tokens(items) -> str | None:
    from library.data.folders import parse_folder_name

    for it in items:
        parsed = parse_folder_name(Path(it.image.path).parent.name)
        if parsed and parsed[1].strip():
            return parsed[1].strip()
    return None


def _split_tokens(tokens: str | None) -> tuple[str | None, str | None]:
    """'ohwx woman' → ('ohwx', 'woman'); 'ohwx' → ('ohwx', None)."""
    if not tokens:
        return None, None
    words = tokens.split()
    return words[0], (" ".join(words[1:]) or None)


def eval_set_from_dataset(dataset, scaling_factor: float, *, class_prompt: str | None = None,
                          prior_prompts: tuple[str, ...] = DEFAULT_PRIOR_PROMPTS, seed: int = 0,
                          source: str = "training images") -> EvalSet | None:
    """From a LoraDataset with cached latents (the trainer's): no image is read or encoded again.

    Returns None when the dataset holds no cached latents (the caller encodes from folders instead).
    """
    if dataset is None or dataset.latents is None:
        return None
    # bucket → (latents, captions, original sizes)
    concept: dict[tuple, tuple[list[torch.Tensor], list[str], list]] = defaultdict(lambda: ([], [], []))
    reg: dict[tuple, tuple[list[torch.Tensor], list[str], list]] = defaultdict(lambda: ([], [], []))
    seen = set()
    items = []
    for di, lay in enumerate(dataset.layouts):
        for k, it in enumerate(lay.items):
            if it.image.path in seen:
                continue
            seen.add(it.image.path)
            items.append(it)
            group = reg if it.is_reg else concept
            lat, caps, sizes = group[tuple(it.bucket)]
            lat.append(dataset.latents[(di, k)].latents.float() * scaling_factor)
            caps.append(it.image.caption)
            sizes.append(tuple(it.image.size))
    trigger, derived = _split_tokens(_folder_tokens([it for it in items if not it.is_reg]))

    def batches(groups):
        return [EvalBatch(torch.stack(lat), caps, sizes, bucket) for bucket, (lat, caps, sizes) in groups.items()]

    return EvalSet(batches(concept), class_prompt=class_prompt or derived, prior_prompts=tuple(prior_prompts),
                   reg=batches(reg), seed=seed, source=source, instance_token=trigger)
