"""The LoRA adapter and the host layer that carries one or more of them.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"):
    y = W x + up(down(x)) * multiplier * alpha / rank
with `down` kaiming-uniform (a=sqrt 5) and `up` zero, so a fresh adapter changes nothing.

`LoRAModule` holds only the adapter (its state dict is exactly Kohya's
`lora_down.weight`, `lora_up.weight`, `alpha`). `LoRAHost` replaces a base layer in
the model, owns it as `base_layer` and adds each attached adapter's output, so several
LoRAs, each with its own multiplier, can be stacked. Adapters are not submodules of
the host: `unet.to(fp16)` or `unet.requires_grad_(False)` never touches them, and the
host hides `base_layer.` from the model's state dict so model keys stay unchanged.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from library.lora.keys import effective_alpha

# Layers whose adapter-folded weight gradient costs at most this many multiply-adds per call
# take the weight-space path (measured on a 2-core AVX-512 CPU: it wins up to ~34M, loses at ~105M).
WEIGHT_SPACE_MAX_MACS = 32 * 1024 * 1024


class LoRAModule(nn.Module):
    """One low-rank adapter for a Linear or Conv2d layer."""

    def __init__(
        self,
        name: str,
        layer: nn.Module,
        rank: int,
        alpha: float | None = 1.0,
        *,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
        multiplier: float = 1.0,
    ) -> None:
        super().__init__()
        self.lora_name = name
        self.rank = int(rank)
        if isinstance(layer, nn.Conv2d):
            self.lora_down = nn.Conv2d(
                layer.in_channels, self.rank, layer.kernel_size, layer.stride, layer.padding, bias=False
            )
            self.lora_up = nn.Conv2d(self.rank, layer.out_channels, (1, 1), (1, 1), bias=False)
        else:
            self.lora_down = nn.Linear(layer.in_features, self.rank, bias=False)
            self.lora_up = nn.Linear(self.rank, layer.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        alpha_value = effective_alpha(alpha, self.rank)
        self.register_buffer("alpha", torch.tensor(alpha_value, dtype=torch.float32))
        self.scale = alpha_value / self.rank
        self.multiplier = float(multiplier)
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self.enabled = True  # False while merged into the base weights

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # The scale follows the loaded alpha (0 means alpha = rank, as in sd-scripts).
        self.scale = effective_alpha(float(self.alpha), self.rank) / self.rank

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lora_down.weight, lora_up.weight), read straight from the parameter dicts (hot path)."""
        return self._modules["lora_down"]._parameters["weight"], self._modules["lora_up"]._parameters["weight"]

    def delta(self, x: torch.Tensor) -> torch.Tensor | None:
        """The adapter's contribution to the layer output; None when it adds nothing.

        Runs once per adapted layer per step (hundreds of times), so the plain path calls
        the functional ops directly instead of the sublayers' `__call__`: same kernels,
        bit-identical results, less Python per call. Dropout lives in `_delta_dropout`.
        """
        if not self.enabled or self.multiplier == 0:
            return None
        if self.training and (self.module_dropout or self.dropout or self.rank_dropout):
            return self._delta_dropout(x)
        down, up = self.lora_down, self.lora_up
        w = down.weight
        if x.dtype != w.dtype:
            x = x.to(w.dtype)
        if type(down) is nn.Linear:
            lx = F.linear(F.linear(x, w), up.weight)
        else:
            lx = up._conv_forward(down._conv_forward(x, w, None), up.weight, None)
        return lx * (self.multiplier * self.scale)

    def _delta_dropout(self, x: torch.Tensor) -> torch.Tensor | None:
        """`delta` with sd-scripts' module, neuron and rank dropout (training only)."""
        if self.module_dropout and torch.rand(1).item() < self.module_dropout:
            return None
        dtype = self.lora_down.weight.dtype
        lx = self.lora_down(x.to(dtype))
        if self.dropout:
            lx = F.dropout(lx, p=self.dropout)
        scale = self.scale
        if self.rank_dropout:
            mask = torch.rand((lx.size(0), self.rank), device=lx.device) > self.rank_dropout
            if lx.dim() == 3:
                mask = mask.unsqueeze(1)
            elif lx.dim() == 4:
                mask = mask.unsqueeze(-1).unsqueeze(-1)
            lx = lx * mask
            scale = scale / (1.0 - self.rank_dropout)  # as if the rank were smaller
        return self.lora_up(lx) * (self.multiplier * scale)

    def delta_weight(self, multiplier: float | None = None) -> torch.Tensor:
        """multiplier * scale * (up @ down) in float32, shaped like the base weight."""
        m = self.multiplier if multiplier is None else multiplier
        return delta_weight(self.lora_up.weight.detach(), self.lora_down.weight.detach(), m * self.scale)


def delta_weight(up: torch.Tensor, down: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * up @ down in float32 for Linear, 1x1 and kxk Conv2d LoRA pairs."""
    up, down = up.float(), down.float()
    if down.dim() == 2:
        product = up @ down
    elif tuple(down.shape[2:]) == (1, 1):
        product = (up.flatten(1) @ down.flatten(1)).unsqueeze(2).unsqueeze(3)
    else:
        # (out, r, 1, 1) composed with (r, in, k, k): a conv of the down kernels by up.
        product = F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    return product * scale


class LoRAHost(nn.Module):
    """Stands in for a base layer and adds the outputs of the attached adapters."""

    is_lora_host = True

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        # A plain list, not submodules: the adapters belong to their networks.
        self.adapters: list[LoRAModule] = []
        self.register_load_state_dict_pre_hook(_route_to_base)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self._modules["base_layer"]
        if not args and not kwargs and self.adapters:
            weight = self._weight_with_adapters(base, x)
            if weight is not None:
                bias = base._parameters["bias"]
                if type(base) is nn.Linear:
                    return F.linear(x, weight, bias)
                return base._conv_forward(x, weight, bias)
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
            if a.training and (a.module_dropout or a.dropout or a.rank_dropout):
                return None
            down, up = a.weights()
            if down.dtype is not torch.float32 or up.dtype is not torch.float32:
                return None
            if not linear:
                down, up = down.reshape(a.rank, -1), up.reshape(w.shape[0], -1)
            weight = torch.addmm(weight, up, down, alpha=a.multiplier * a.scale)
        return weight if linear else weight.view(w.shape)

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


def attach(target_root: nn.Module, path: str, adapter: LoRAModule) -> LoRAHost:
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


def detach(target_root: nn.Module, path: str, adapter: LoRAModule) -> None:
    """Remove `adapter`; when no adapter is left, put the bare base layer back."""
    parent_path, _, child = path.rpartition(".")
    parent = target_root.get_submodule(parent_path) if parent_path else target_root
    current = getattr(parent, child)
    if not getattr(current, "is_lora_host", False):
        return
    current.adapters = [a for a in current.adapters if a is not adapter]
    if not current.adapters:
        setattr(parent, child, current.base_layer)
