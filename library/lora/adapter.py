"""The contract every network algorithm (LoRA, LoHa, LoKr, with or without DoRA) shares.

`Adapter` owns what does not depend on the algorithm: the Kohya module name, the
multiplier, alpha and scale (alpha / rank; alpha 0 or None means rank, as in
sd-scripts and LyCORIS), the three dropouts, the enabled flag used while merged,
DoRA's magnitude vector (`dora_scale`) and the way a delta weight becomes a layer
output or a merged weight. An algorithm subclass only says which tensors it has
(`KEYS`, with their shapes), how they make the weight delta (`product()`, a pure
function of the paper it names) and which of them are "up" matrices for LoRA+.

The adapter is not a submodule of the model: `LoRAHost` (library.lora.module) calls
`delta(x)` for additive adapters and `apply_to_weight(w)` for DoRA, whose result is
not a sum. `delta_weight()` is the public way to read an adapter as one tensor shaped
like the base weight: resize, merge, extract and `inspect` all work on it.

Dropouts: `module_dropout` skips the adapter for a step; `rank_dropout` zeroes output rows
of LoHa/LoKr/DoRA delta weights (LyCORIS' rule; LoRA keeps sd-scripts' per-rank mask);
`dropout` drops the adapter's output (LoRA: its hidden activations). With DoRA the output
is not a sum, so `dropout` does not apply there, as in LyCORIS.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from library.lora.algorithms.dora import DORA_KEY, dora_weight, magnitude_of
from library.lora.keys import effective_alpha


def layer_op(layer: nn.Module) -> Any:
    """F.linear or F.conv2d with the layer's stride/padding/dilation/groups (no bias)."""
    if isinstance(layer, nn.Conv2d):
        return functools.partial(
            F.conv2d, stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups
        )
    return F.linear


class Adapter(nn.Module):
    """One adapted layer; subclasses add the algorithm's parameters and `product()`."""

    ALGO: ClassVar[str] = ""
    # file keys of the algorithm's own tensors (alpha and dora_scale are handled here)
    KEYS: ClassVar[tuple[str, ...]] = ()
    # keys whose learning rate LoRA+ multiplies (sd-scripts and LyCORIS: names containing "lora_up")
    PLUS_KEYS: ClassVar[tuple[str, ...]] = ()
    # the fp32 fast path of LoRAHost folds only plain low-rank pairs
    FOLDS: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        layer: nn.Module,
        rank: int | None,
        alpha: float | None,
        *,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
        multiplier: float = 1.0,
        dora: bool = False,
        dora_on_output: bool = True,
    ) -> None:
        super().__init__()
        self.lora_name = name
        self.rank = int(rank) if rank else 0
        self.weight_shape = tuple(layer.weight.shape)
        self._op = layer_op(layer)
        self._layer = [layer]  # a list, not a submodule: the layer belongs to the model
        alpha_value = effective_alpha(alpha, self.rank) if self.rank else 1.0
        self.register_buffer("alpha", torch.tensor(alpha_value, dtype=torch.float32))
        self.scale = alpha_value / self.rank if self.rank else 1.0
        self.multiplier = float(multiplier)
        self.dropout = dropout
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self.enabled = True  # False while merged into the base weights
        self.dora = bool(dora)
        if self.dora:
            self.dora_scale = nn.Parameter(magnitude_of(layer.weight.detach(), dora_on_output))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # The scale follows the loaded alpha (0 means alpha = rank, as in sd-scripts).
        if self.rank:
            self.scale = effective_alpha(float(self.alpha), self.rank) / self.rank

    # -- the algorithm ------------------------------------------------------------------
    def product(self) -> torch.Tensor:
        """The algorithm's weight delta before alpha/rank, shaped like the base weight."""
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """The file tensors of this adapter by key (without alpha and dora_scale)."""
        return {key: self.get_parameter(key) for key in self.KEYS if _has(self, key)}

    def plus_parameters(self) -> list[nn.Parameter]:
        """Parameters LoRA+ gives ratio x lr (Hayou et al. 2024); empty for LoHa/LoKr as in LyCORIS."""
        return [self.get_parameter(k) for k in self.PLUS_KEYS if _has(self, k)]

    # -- weights --------------------------------------------------------------------------
    def delta_weight(self, multiplier: float | None = None, base_weight: torch.Tensor | None = None) -> torch.Tensor:
        """What this adapter adds to the base weight at `multiplier`, float32, shaped like the weight.

        For LoRA/LoHa/LoKr this is multiplier * scale * product. With DoRA it depends
        on the base weight (the layer's own unless `base_weight` is given).
        """
        m = self.multiplier if multiplier is None else multiplier
        with torch.no_grad():
            delta = self.product().float().reshape(self.weight_shape) * self.scale
            if not self.dora:
                return delta * m
            base = (self._layer[0].weight if base_weight is None else base_weight).detach().float()
            return (dora_weight(base, delta, self.dora_scale.float()) - base) * m

    def plain_delta(self) -> torch.Tensor:
        """scale * product without DoRA, float32 (what max-norm scaling measures, as LyCORIS)."""
        with torch.no_grad():
            return self.product().float().reshape(self.weight_shape) * self.scale

    def merged_weight(self, base: torch.Tensor, multiplier: float) -> torch.Tensor:
        """base (float32) with this adapter merged in at `multiplier`."""
        return base + self.delta_weight(multiplier, base_weight=base).to(base.device)

    def apply_to_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The layer weight with this adapter applied, differentiable (LoRAHost's DoRA path)."""
        if not self.enabled or self.multiplier == 0 or self._module_dropped():
            return weight
        delta = self._delta_weight_train(weight.dtype)
        if not self.dora:
            return weight + delta * self.multiplier
        w32 = weight.float()
        merged = dora_weight(w32, delta.float(), self.dora_scale.float())
        return (w32 + (merged - w32) * self.multiplier).to(weight.dtype)

    def _delta_weight_train(self, dtype: torch.dtype) -> torch.Tensor:
        """scale * product with rank dropout (LyCORIS drops output rows of the delta weight)."""
        delta = self.product().reshape(self.weight_shape).to(dtype) * self.scale
        if self.training and self.rank_dropout:
            keep = (torch.rand(delta.shape[0], device=delta.device) > self.rank_dropout).to(delta.dtype)
            delta = delta * keep.view(-1, *[1] * (delta.dim() - 1))
        return delta

    def _module_dropped(self) -> bool:
        return bool(self.training and self.module_dropout and torch.rand(1).item() < self.module_dropout)

    def delta(self, x: torch.Tensor) -> torch.Tensor | None:
        """The adapter's contribution to the layer output (additive algorithms); None when nothing."""
        if not self.enabled or self.multiplier == 0 or self._module_dropped():
            return None
        delta = self._delta_weight_train(self._param_dtype())
        if x.dtype != delta.dtype and not torch.is_autocast_enabled(x.device.type):  # autocast casts in the op
            x = x.to(delta.dtype)
        out = self._op(x, (delta * self.multiplier).contiguous())
        if self.training and self.dropout:
            out = F.dropout(out, p=self.dropout)  # LyCORIS' bypass forward drops the delta output
        return out

    def _param_dtype(self) -> torch.dtype:
        """The dtype of the algorithm's tensors (fp16/bf16 under full_fp16/full_bf16)."""
        return next(iter(self.tensors().values())).dtype

    @classmethod
    def parts_rank(cls, parts: Mapping[str, torch.Tensor]) -> int | None:
        """The rank alpha is divided by, read from a file's tensors (None: scale 1)."""
        raise NotImplementedError


def _has(module: nn.Module, key: str) -> bool:
    """Whether the adapter holds the tensor `key` (LoKr's forms differ; LoRA's keys are dotted)."""
    if "." not in key:
        return module._parameters.get(key) is not None
    try:
        module.get_parameter(key)
    except AttributeError:
        return False
    return True


__all__ = ["Adapter", "DORA_KEY", "layer_op"]
