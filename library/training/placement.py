"""Where things live during training: cached tensors, and the VAE and text encoder once caching is done.

A step that copies its latents from pageable host memory makes the GPU wait for the
copy, and a blocking copy makes the host wait for the GPU. Cached latents and
text-encoder outputs are small next to the model (SD1.5 at 512 px: 64 KB of latents
and 236 KB of encoder output per image), so they move to the GPU once when they fit
in a share of the free memory; otherwise the DataLoader hands out batches in pinned
host memory and the step copies them with `non_blocking=True`.

After caching, the models that only made the caches leave the GPU:

    option        cached latents / TE outputs        VAE and frozen text encoder after caching
    (default)     GPU when they fit, else pinned RAM  moved to RAM (back on the GPU for samples)
    --lowvram     pinned RAM, copied per batch        moved to RAM; the CUDA cache is emptied
    --lowram      GPU when they fit, else pinned RAM  stay on the GPU (no copy in RAM)

A text encoder that is trained, or whose outputs are not cached, stays on the GPU.
"""
from __future__ import annotations

from typing import Any

import torch

# Cached tensors go to the GPU when they take at most this share of its free memory
# (measured after the model is loaded, before the optimizer states and activations exist).
CACHE_SHARE_OF_FREE = 0.25


def cache_bytes(dataset: Any) -> int:
    """Bytes of the dataset's cached latents (with flipped copies) and text-encoder outputs."""
    total = 0
    for cached in (dataset.latents or {}).values():
        total += sum(t.numel() * t.element_size() for t in (cached.latents, cached.flipped) if t is not None)
    for t in (dataset.text_encoder_outputs or {}).values():
        total += t.numel() * t.element_size()
    return total


def caches_fit(nbytes: int, free_bytes: int, share: float = CACHE_SHARE_OF_FREE) -> bool:
    """True when `nbytes` of caches take at most `share` of `free_bytes`."""
    return nbytes <= share * free_bytes


def move_caches(dataset: Any, device: torch.device) -> None:
    """Every cached tensor of the dataset onto `device` (batches are then stacked there)."""
    for cached in (dataset.latents or {}).values():
        cached.latents = cached.latents.to(device)
        if cached.flipped is not None:
            cached.flipped = cached.flipped.to(device)
    if dataset.text_encoder_outputs:
        dataset.text_encoder_outputs = {k: v.to(device) for k, v in dataset.text_encoder_outputs.items()}


def place_caches(dataset: Any, device: torch.device, workers: int, lowvram: bool) -> tuple[bool, str | None]:
    """Put the caches on a CUDA device when allowed and they fit; returns (on the device, a note for the log).

    Not with DataLoader workers: a forked worker cannot use CUDA tensors.
    """
    nbytes = cache_bytes(dataset)
    if device.type != "cuda" or nbytes == 0:
        return False, None
    size = f"{nbytes / 2**20:.1f} MB"
    if lowvram or workers > 0:
        why = "--lowvram" if lowvram else "DataLoader workers"
        return False, f"cached latents/text-encoder outputs ({size}) stay in pinned host memory ({why})"
    free, _ = torch.cuda.mem_get_info(device)
    if not caches_fit(nbytes, free):
        return False, f"cached latents/text-encoder outputs ({size}) do not fit on the GPU; batches come from pinned host memory"
    move_caches(dataset, device)
    return True, f"cached latents/text-encoder outputs ({size}) kept on {device}"


def offload_after_caching(bundle: Any, latents_cached: bool, te_cached: bool, lowram: bool, lowvram: bool) -> list[str]:
    """Move the VAE and the frozen text encoder off the GPU once their outputs are cached (see the table above)."""
    moved = []
    if lowram and not lowvram:
        return moved
    if latents_cached:
        bundle.vae.to("cpu")
        moved.append("VAE")
    if te_cached:
        encoders = text_encoders_of(bundle)
        for encoder in encoders:
            encoder.to("cpu")
        moved.append("text encoders" if len(encoders) > 1 else "text encoder")
    if lowvram and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return moved


def text_encoders_of(bundle: Any) -> list[Any]:
    """The bundle's text encoders (SDXL: two); objects without `text_encoders()` have one."""
    if hasattr(bundle, "text_encoders"):
        return list(bundle.text_encoders())
    return [bundle.text_encoder]


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without any)."""
    for param in module.parameters():
        return param.device
    return torch.device("cpu")
