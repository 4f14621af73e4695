"""Which algorithm a module of a file uses, and what the file's tensors mean.

A module's algorithm is told by its keys, as A1111 and ComfyUI tell it: `lora_down`/`lora_up`
-> LoRA, `hada_*` -> LoHa, `lokr_*` -> LoKr; a `dora_scale` beside any of them adds DoRA.
`delta_from_parts` is the file-side twin of `Adapter.delta_weight()`: the weight delta of one
module straight from its tensors, which is what resize/merge/extract and `inspect` use.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from library.lora import keys
from library.lora.adapter import Adapter
from library.lora.algorithms.dora import DORA_KEY, dora_weight, is_on_output
from library.lora.algorithms.lokr import LoKrModule
from library.lora.algorithms.loha import LoHaModule
from library.lora.algorithms.lora import LoRAModule

ALGORITHMS: dict[str, type[Adapter]] = {"lora": LoRAModule, "loha": LoHaModule, "lokr": LoKrModule}
# LyCORIS' algo names for the same classes (locon is LoRA on convolutions too)
ALGO_ALIASES = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}


def algorithm_of(parts: Mapping[str, Any]) -> type[Adapter] | None:
    """The algorithm class whose keys a module's tensors use (None: no known layout)."""
    for cls in (LoRAModule, LoHaModule, LoKrModule):
        if any(k in parts for k in cls.KEYS):
            return cls
    return None


def parts_problems(name: str, parts: Mapping[str, torch.Tensor]) -> list[str]:
    """Problems with one module's tensors: pairing, ranks, alpha, finiteness."""
    cls = algorithm_of(parts)
    if cls is None:
        return [f"{name}: has no lora_down/lora_up, hada_* or lokr_* tensors"]
    if cls is LoRAModule:
        problems = _lora_problems(name, parts)
    else:
        problems = [f"{name}: {p}" for p in cls.parts_problems(parts)]
    alpha = parts.get(keys.ALPHA)
    if alpha is not None and alpha.numel() != 1:
        problems.append(f"{name}: alpha has shape {tuple(alpha.shape)}, expected a single number")
    bad = [s for s, t in parts.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        problems.append(f"{name}: non-finite values (NaN/inf) in {', '.join(sorted(bad))}")
    return problems


def _lora_problems(name: str, parts: Mapping[str, torch.Tensor]) -> list[str]:
    down, up = parts.get(keys.DOWN), parts.get(keys.UP)
    if down is None or up is None:
        return [f"{name}: has no {keys.DOWN if down is None else keys.UP}"]
    if down.dim() not in (2, 4) or up.dim() != down.dim():
        return [f"{name}: down {tuple(down.shape)} and up {tuple(up.shape)} are not a LoRA pair"]
    if down.shape[0] != up.shape[1]:
        return [f"{name}: rank mismatch, lora_down has rank {down.shape[0]} but lora_up has {up.shape[1]}"]
    mid = parts.get(keys.MID)
    if mid is not None:
        r = down.shape[0]
        if down.dim() != 4 or tuple(down.shape[2:]) != (1, 1) or tuple(up.shape[2:]) != (1, 1):
            return [f"{name}: Tucker LoCon needs 1x1 lora_down/lora_up, got {tuple(down.shape)} / {tuple(up.shape)}"]
        if mid.dim() != 4 or tuple(mid.shape[:2]) != (r, r):
            return [f"{name}: lora_mid has shape {tuple(mid.shape)}, expected ({r}, {r}, kh, kw)"]
    return []


def parts_scale(parts: Mapping[str, torch.Tensor]) -> float:
    """alpha / rank of a file module (1 without a rank, or without alpha: A1111's rule)."""
    cls = algorithm_of(parts)
    rank = cls.parts_rank(parts) if cls is not None else None
    if not rank or keys.ALPHA not in parts:
        return 1.0
    return keys.effective_alpha(float(parts[keys.ALPHA]), rank) / rank


def parts_product(parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The algorithm's product (before alpha/rank) of a file module, float32, unshaped."""
    cls = algorithm_of(parts)
    if cls is LoRAModule:
        from library.lora.algorithms.lora import delta_weight

        return delta_weight(parts[keys.UP], parts[keys.DOWN], 1.0, parts.get(keys.MID))
    if cls is None:
        raise ValueError("not a module of a known algorithm")
    return cls.parts_product(parts)


def delta_from_parts(
    parts: Mapping[str, torch.Tensor], weight_shape: tuple[int, ...] | None = None,
    base_weight: torch.Tensor | None = None, multiplier: float = 1.0,
) -> torch.Tensor:
    """multiplier * (what this file module adds to its layer's weight), float32.

    `weight_shape` reshapes (LoHa/LoKr convolutions are stored flat); DoRA modules
    need `base_weight`, since their change depends on it.
    """
    shape = tuple(base_weight.shape) if base_weight is not None else weight_shape
    delta = parts_product(parts) * parts_scale(parts)
    if shape is not None:
        delta = delta.reshape(shape)
    if DORA_KEY not in parts:
        return delta * multiplier
    if base_weight is None:
        raise ValueError("a DoRA module's weight change depends on the base weight; pass base_weight")
    base = base_weight.float()
    return (dora_weight(base, delta, parts[DORA_KEY].float()) - base) * multiplier


def implied_out_numel(parts: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(output channels, weight elements) the module's delta has: what it must match in a layer."""
    product = parts_product(parts)
    return int(product.shape[0]), int(product.numel())


def adapter_from_parts(name: str, layer: nn.Module, parts: Mapping[str, torch.Tensor], **kwargs: Any) -> Adapter:
    """An adapter whose tensors have exactly the file module's shapes (values loaded later)."""
    cls = algorithm_of(parts)
    rank = cls.parts_rank(parts)
    options = dict(kwargs)
    if cls is LoHaModule:
        options["use_tucker"] = "hada_t1" in parts
    if cls is LoRAModule:
        options["use_tucker"] = keys.MID in parts
    if DORA_KEY in parts:
        options["dora"] = True
        options["dora_on_output"] = is_on_output(parts[DORA_KEY], tuple(layer.weight.shape))
    alpha = float(parts[keys.ALPHA]) if keys.ALPHA in parts else None
    adapter = cls(name, layer, rank or 1, alpha, **options)
    if cls is not LoRAModule:
        _reshape_parameters(adapter, {k: v for k, v in parts.items() if k in cls.KEYS})
    adapter.rank = rank or 0
    adapter.scale = parts_scale(parts)
    adapter.alpha.fill_(float(parts[keys.ALPHA]) if keys.ALPHA in parts else float(rank or 1))
    return adapter


def _reshape_parameters(adapter: Adapter, wanted: Mapping[str, torch.Tensor]) -> None:
    """Give the adapter exactly the file's set of tensors and shapes (LoKr's forms differ by factor)."""
    for key in list(adapter._parameters):
        if key in adapter.KEYS and key not in wanted:
            delattr(adapter, key)
    for key, value in wanted.items():
        current = adapter._parameters.get(key)
        if current is None or tuple(current.shape) != tuple(value.shape):
            setattr(adapter, key, nn.Parameter(torch.zeros(value.shape)))
