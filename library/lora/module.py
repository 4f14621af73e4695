"""The host layer that carries one or more adapters (LoRA, LoHa, LoKr, DoRA) in the model.

An adapter (library.lora.adapter.Adapter; `LoRAModule` is re-exported here) holds only
its own tensors, so its state dict is exactly what the file holds. `LoRAHost` replaces
a base layer in the model, owns it as `base_layer` and adds each attached adapter's
output, so several networks, each with its own multiplier, can be stacked. Adapters
are not submodules of the host: `unet.to(fp16)` or `unet.requires_grad_(False)` never
touches them, and the host hides `base_layer.` from the model's state dict so model
keys stay unchanged. DoRA adapters are not additive: with one attached the host builds
the layer's weight adapter by adapter and runs the layer's op once.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from library.lora.adapter import Adapter
from library.lora.algorithms.lora import LoRAModule, delta_weight

__all__ = ["LoRAHost", "LoRAModule", "attach", "delta_weight", "detach"]

# Layers whose adapter-folded weight gradient costs at most this many multiply-adds per call
# take the weight-space path (measured on a 2-core AVX-512 CPU: it wins up to ~34M, loses at ~105M).
WEIGHT_SPACE_MAX_MACS = 32 * 1024 * 1024


class LoRAHost(nn.Module):
    """Stands in for a base layer and adds the outputs of the attached adapters."""

    is_lora_host = True

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        # A plain list, not submodules: the adapters belong to their networks.
        self.adapters: list[Adapter] = []
        self.register_load_state_dict_pre_hook(_route_to_base)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self._modules["base_layer"]
        if not args and not kwargs and self.adapters:
            weight = self._weight_with_adapters(base, x)
            if weight is None and any(a.dora and a.enabled for a in self.adapters):
                weight = self._decomposed_weight(base)
            if weight is not None:
                bias = base._parameters["bias"]
                if type(base) is nn.Linear:
                    return F.linear(x, weight, bias)
                # the direct CPU conv kernel's weight gradient needs a contiguous (not channels-last) input
                return base._conv_forward(x.contiguous(), weight, bias)
        out = base(x, *args, **kwargs)
        for adapter in self.adapters:
            delta = adapter.delta(x)
            if delta is not None:
                out = out + delta.to(out.dtype)
        return out

    def _weight_with_adapters(self, base: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """W + sum of the adapters' scaled up @ down, when that is the cheaper way to the same output.

        For a small layer, folding the rank-r product into the weight replaces four tiny
        ops per adapter (and their backward) by one weight-sized addmm; this pays while
        the extra weight gradient (tokens x in x out multiply-adds) stays small, so only
        under `WEIGHT_SPACE_MAX_MACS`. Only float32 without autocast: in fp16/bf16 the
        small delta would be rounded away in the weight. Dropout keeps the usual path.
        Runs for every adapted layer every step, hence the direct `_parameters` reads.
        """
        w = base._parameters["weight"]
        if w.dtype is not torch.float32 or x.dtype is not torch.float32 or torch.is_autocast_enabled(x.device.type):
            return None
        linear = type(base) is nn.Linear
        if linear:
            macs = x.numel() * w.shape[0]
        elif type(base) is nn.Conv2d and base.groups == 1 and base.padding_mode == "zeros" and base.dilation == (1, 1):
            macs = x.numel() * w[0].numel() // (base.stride[0] * base.stride[1])
        else:
            return None
        if macs > WEIGHT_SPACE_MAX_MACS:
            return None
        weight = w if linear else w.reshape(w.shape[0], -1)
        for a in self.adapters:
            if not a.enabled or a.multiplier == 0:
                continue
            if not a.FOLDS or a.dora:
                return None
            if a.training and (a.module_dropout or a.dropout or a.rank_dropout):
                return None
            down, up = a.weights()
            if down.dtype is not torch.float32 or up.dtype is not torch.float32:
                return None
            if not linear:
                down, up = down.reshape(a.rank, -1), up.reshape(w.shape[0], -1)
            weight = torch.addmm(weight, up, down, alpha=a.multiplier * a.scale)
        return weight if linear else weight.view(w.shape)

    def _decomposed_weight(self, base: nn.Module) -> torch.Tensor | None:
        """The weight with every adapter applied in order (DoRA renormalises what came before it)."""
        if type(base) is not nn.Linear and type(base) is not nn.Conv2d:
            return None
        weight = base._parameters["weight"]
        for adapter in self.adapters:
            weight = adapter.apply_to_weight(weight)
        return weight.contiguous()  # CPU conv backward wants a contiguous weight

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # weight, bias, in_features, kernel_size... are read by model code.
            return getattr(super().__getattr__("base_layer"), name)

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """The base layer's keys, without `base_layer.`: model state dicts look unwrapped."""
        return self.base_layer.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)


def _route_to_base(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Loading an unwrapped model state dict into a wrapped model: `x.weight` -> `x.base_layer.weight`."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if not rest.startswith("base_layer."):
            state_dict[prefix + "base_layer." + rest] = state_dict.pop(key)


def attach(target_root: nn.Module, path: str, adapter: Adapter) -> LoRAHost:
    """Attach `adapter` to the layer at `path`, wrapping it in a host the first time."""
    parent_path, _, child = path.rpartition(".")
    parent = target_root.get_submodule(parent_path) if parent_path else target_root
    current = getattr(parent, child)
    if not getattr(current, "is_lora_host", False):
        current = LoRAHost(current)
        setattr(parent, child, current)
    if adapter not in current.adapters:
        current.adapters.append(adapter)
    return current


def detach(target_root: nn.Module, path: str, adapter: Adapter) -> None:
    """Remove `adapter`; when no adapter is left, put the bare base layer back."""
    parent_path, _, child = path.rpartition(".")
    parent = target_root.get_submodule(parent_path) if parent_path else target_root
    current = getattr(parent, child)
    if not getattr(current, "is_lora_host", False):
        return
    current.adapters = [a for a in current.adapters if a is not adapter]
    if not current.adapters:
        setattr(parent, child, current.base_layer)
