"""LoRA and LoCon: a low-rank pair per layer, Kohya's `lora_down` / `lora_up` / `alpha`.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"):
    y = W x + up(down(x)) * multiplier * alpha / rank
with `down` kaiming-uniform (a=sqrt 5) and `up` zero, so a fresh adapter changes nothing.
LoCon is the same pair on 3x3 convolutions: `down` is a kxk conv to rank channels,
`up` a 1x1 conv back (sd-scripts' conv_dim, LyCORIS `algo=locon`/`algo=lora`).

Tucker LoCon (LyCORIS `use_tucker` on a kxk conv; Tucker 1966, "Some mathematical notes on
three-mode factor analysis", as Kim et al. 2016 use it to compress convolutions): `down` becomes
a 1x1 conv (r, in, 1, 1), a core `lora_mid` (r, r, kh, kw) carries the kernel, stride and
padding, `up` stays (out, r, 1, 1):
    dW[o, i, :, :] = sum_{a,b} up[o, a] * mid[a, b, :, :] * down[b, i] * alpha / rank
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from library.lora.adapter import Adapter

DOWN = "lora_down.weight"
UP = "lora_up.weight"
MID = "lora_mid.weight"


def tucker_delta(up: torch.Tensor, mid: torch.Tensor, down: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * up x mid x down in float32: (out, r, 1, 1), (r, r, k, k), (r, in, 1, 1) -> (out, in, k, k)."""
    up2, down2 = up.float().flatten(1), down.float().flatten(1)
    return torch.einsum("o a, a b k l, b i -> o i k l", up2, mid.float(), down2) * scale


def delta_weight(up: torch.Tensor, down: torch.Tensor, scale: float, mid: torch.Tensor | None = None) -> torch.Tensor:
    """scale * up @ down in float32 for Linear, 1x1 and kxk Conv2d LoRA pairs (Hu et al. 2021); with
    `mid`, the Tucker LoCon product up x mid x down."""
    if mid is not None:
        return tucker_delta(up, mid, down, scale)
    up, down = up.float(), down.float()
    if down.dim() == 2:
        product = up @ down
    elif tuple(down.shape[2:]) == (1, 1):
        product = (up.flatten(1) @ down.flatten(1)).unsqueeze(2).unsqueeze(3)
    else:
        # (out, r, 1, 1) composed with (r, in, k, k): a conv of the down kernels by up.
        product = F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
    return product * scale


class LoRAModule(Adapter):
    """One low-rank adapter for a Linear or Conv2d layer."""

    ALGO: ClassVar[str] = "lora"
    KEYS: ClassVar[tuple[str, ...]] = (DOWN, UP, MID)
    PLUS_KEYS: ClassVar[tuple[str, ...]] = (UP,)
    FOLDS: ClassVar[bool] = True

    def __init__(self, name: str, layer: nn.Module, rank: int, alpha: float | None = 1.0, *,
                 use_tucker: bool = False, **kwargs: Any) -> None:
        """kwargs: the Adapter's (dropout, rank_dropout, module_dropout, multiplier, dora, dora_on_output).

        `use_tucker` (LyCORIS) applies to kxk convolutions only; other layers keep the plain pair.
        """
        super().__init__(name, layer, rank, alpha, **kwargs)
        self.tucker = bool(use_tucker and isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) != (1, 1))
        if self.tucker:
            self.FOLDS = False  # the fp32 fold path of LoRAHost knows plain pairs only
            self.lora_down = nn.Conv2d(layer.in_channels, self.rank, (1, 1), bias=False)
            self.lora_mid = nn.Conv2d(self.rank, self.rank, layer.kernel_size, layer.stride, layer.padding,
                                      layer.dilation, bias=False)
            self.lora_up = nn.Conv2d(self.rank, layer.out_channels, (1, 1), (1, 1), bias=False)
            nn.init.kaiming_uniform_(self.lora_mid.weight, a=math.sqrt(5))
        elif isinstance(layer, nn.Conv2d):
            self.lora_down = nn.Conv2d(
                layer.in_channels, self.rank, layer.kernel_size, layer.stride, layer.padding, bias=False
            )
            self.lora_up = nn.Conv2d(self.rank, layer.out_channels, (1, 1), (1, 1), bias=False)
        else:
            self.lora_down = nn.Linear(layer.in_features, self.rank, bias=False)
            self.lora_up = nn.Linear(self.rank, layer.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)

    @classmethod
    def parts_rank(cls, parts: Mapping[str, torch.Tensor]) -> int | None:
        return int(parts[DOWN].shape[0])

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lora_down.weight, lora_up.weight), read straight from the parameter dicts (hot path)."""
        return self._modules["lora_down"]._parameters["weight"], self._modules["lora_up"]._parameters["weight"]

    def _mid(self) -> torch.Tensor | None:
        return self.lora_mid.weight if self.tucker else None

    def product(self) -> torch.Tensor:
        return delta_weight(self.lora_up.weight, self.lora_down.weight, 1.0, self._mid())

    def _delta_weight_train(self, dtype: torch.dtype) -> torch.Tensor:
        # differentiable up @ down (delta_weight() above works on detached float copies too)
        up, down = self.lora_up.weight, self.lora_down.weight
        if self.tucker:
            product = torch.einsum("o a, a b k l, b i -> o i k l", up.flatten(1), self.lora_mid.weight,
                                   down.flatten(1))
        elif down.dim() == 2:
            product = up @ down
        elif tuple(down.shape[2:]) == (1, 1):
            product = (up.flatten(1) @ down.flatten(1)).reshape(self.weight_shape)
        else:
            product = F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        delta = product.to(dtype) * self.scale
        if self.training and self.rank_dropout:
            keep = (torch.rand(delta.shape[0], device=delta.device) > self.rank_dropout).to(delta.dtype)
            delta = delta * keep.view(-1, *[1] * (delta.dim() - 1))
        return delta

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
        # Under autocast the matmuls cast x themselves: an explicit cast would copy the activation to
        # float32 and back (same bits, two more kernels per layer, the launch-bound part of a GPU step).
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(w.dtype)
        if type(down) is nn.Linear:
            lx = F.linear(F.linear(x, w), up.weight)
        else:
            hidden = down._conv_forward(x, w, None)
            if self.tucker:
                hidden = self.lora_mid(hidden)
            lx = up._conv_forward(hidden, up.weight, None)
        return lx * (self.multiplier * self.scale)

    def _delta_dropout(self, x: torch.Tensor) -> torch.Tensor | None:
        """`delta` with sd-scripts' module, neuron and rank dropout (training only)."""
        if self.module_dropout and torch.rand(1).item() < self.module_dropout:
            return None
        dtype = self.lora_down.weight.dtype
        lx = self.lora_down(x.to(dtype))
        if self.tucker:
            lx = self.lora_mid(lx)
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

    def delta_weight(self, multiplier: float | None = None, base_weight: torch.Tensor | None = None) -> torch.Tensor:
        """multiplier * scale * (up @ down) in float32, shaped like the base weight (DoRA: see Adapter)."""
        if self.dora:
            return super().delta_weight(multiplier, base_weight)
        m = self.multiplier if multiplier is None else multiplier
        mid = self._mid()
        return delta_weight(self.lora_up.weight.detach(), self.lora_down.weight.detach(), m * self.scale,
                            None if mid is None else mid.detach())
