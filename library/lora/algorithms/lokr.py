"""LoKr: the weight delta as a Kronecker product of a small and a (low-rank) large factor.

KronA (Edalati et al. 2022, "KronA: Parameter Efficient Tuning with Kronecker Adapter"), as
LyCORIS `algo=lokr` trains it:
    dW = w1 (x) w2 * alpha / rank,   w1: (a, c), w2: (b, d), out = a*b, in = c*d
where `(x)` is torch.kron, (a, b) and (c, d) come from `factorization(dim, factor)` and
- w1 is `lokr_w1`, or `lokr_w1_a @ lokr_w1_b` with `decompose_both` when rank < max(a, c)/2;
- w2 is `lokr_w2_a @ lokr_w2_b` ((b, r) @ (r, d*kh*kw) for convs) when rank < max(b, d)/2,
  else the full `lokr_w2` ((b, d) or (b, d, kh, kw)); `full_matrix` forces the full form;
  with `use_tucker` on a kxk conv, `lokr_t2` (r, r, kh, kw) with `lokr_w2_a` (r, b), `lokr_w2_b` (r, d).
The rank alpha divides by is `lokr_w1_b.shape[0]`, else `lokr_w2_b.shape[0]`; with both
factors full there is none and the scale is 1 (LyCORIS then stores alpha = rank).
Initialisation (LyCORIS): w1 (or w1_a, w1_b), w2_a, t2 kaiming-uniform; w2 or w2_b zero.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from library.lora.adapter import Adapter
from library.lora.algorithms.loha import tucker

W1, W1A, W1B, W2, W2A, W2B, T2 = "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n) with m * n = dimension, m <= n: `factor` itself when it divides, else the most
    balanced split whose m stays <= factor (LyCORIS' rule; -1 means no limit)."""
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    limit = dimension if factor < 0 else factor
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > dimension + 1 or new_m > limit:  # LyCORIS compares with the first sum only
            break
        m, n = new_m, new_n
    return (m, n) if m <= n else (n, m)


def lokr_product(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """w1 (x) w2 (Kronecker product, Edalati et al. 2022); w1 gains trailing 1s to match a 4-D w2."""
    while w1.dim() < w2.dim():
        w1 = w1.unsqueeze(-1)
    return torch.kron(w1, w2.contiguous())


class LoKrModule(Adapter):
    """LyCORIS LoKr for a Linear or Conv2d layer."""

    ALGO: ClassVar[str] = "lokr"
    KEYS: ClassVar[tuple[str, ...]] = (W1, W1A, W1B, W2, W2A, W2B, T2)

    def __init__(self, name: str, layer: nn.Module, rank: int, alpha: float | None = 1.0, *, factor: int = -1,
                 decompose_both: bool = False, full_matrix: bool = False, use_tucker: bool = False,
                 **kwargs) -> None:
        out_dim, in_dim, *kernel = tuple(layer.weight.shape)
        (a, b), (c, d) = factorization(out_dim, int(factor)), factorization(in_dim, int(factor))
        small_lowrank = decompose_both and not full_matrix and rank < max(a, c) / 2
        big_lowrank = not full_matrix and rank < max(b, d) / 2
        if not small_lowrank and not big_lowrank:
            alpha = rank  # both factors full: scale 1, as LyCORIS stores it
        super().__init__(name, layer, rank, alpha, **kwargs)
        r = self.rank
        if small_lowrank:
            self.lokr_w1_a = nn.Parameter(torch.empty(a, r))
            self.lokr_w1_b = nn.Parameter(torch.empty(r, c))
        else:
            self.lokr_w1 = nn.Parameter(torch.empty(a, c))
        k = kernel[0] * kernel[1] if kernel else 1
        if not big_lowrank:
            self.lokr_w2 = nn.Parameter(torch.zeros(b, d, *kernel))
        elif use_tucker and kernel and k != 1:
            self.lokr_t2 = nn.Parameter(torch.empty(r, r, *kernel))
            self.lokr_w2_a = nn.Parameter(torch.empty(r, b))
            self.lokr_w2_b = nn.Parameter(torch.zeros(r, d))
        else:
            self.lokr_w2_a = nn.Parameter(torch.empty(b, r))
            self.lokr_w2_b = nn.Parameter(torch.zeros(r, d * k))
        with torch.no_grad():
            for key in (W1, W1A, W1B, W2A, T2):
                if key in self._parameters:
                    nn.init.kaiming_uniform_(self._parameters[key], a=math.sqrt(5))
        if not small_lowrank and not big_lowrank:
            self.rank, self.scale = 0, 1.0

    @classmethod
    def parts_rank(cls, parts: Mapping[str, torch.Tensor]) -> int | None:
        for key in (W1B, W2B):
            if key in parts:
                return int(parts[key].shape[0])
        return None

    @classmethod
    def parts_problems(cls, parts: Mapping[str, torch.Tensor]) -> list[str]:
        problems = []
        if W1 not in parts and not (W1A in parts and W1B in parts):
            problems.append("has neither lokr_w1 nor lokr_w1_a + lokr_w1_b")
        if W2 not in parts and not (W2A in parts and W2B in parts):
            problems.append("has neither lokr_w2 nor lokr_w2_a + lokr_w2_b")
        return problems

    @classmethod
    def parts_product(cls, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return _product({k: v.float() for k, v in parts.items() if k in cls.KEYS})

    def product(self) -> torch.Tensor:
        return _product({k: p for k, p in self._parameters.items() if k in self.KEYS and p is not None})


def _product(f: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """w1 and w2 from whichever of their forms the tensors hold, then the Kronecker product."""
    w1 = f[W1] if W1 in f else f[W1A] @ f[W1B]
    if W2 in f:
        w2 = f[W2]
    elif T2 in f:
        w2 = tucker(f[T2], f[W2A], f[W2B])
    else:
        w2 = f[W2A] @ f[W2B]
    return lokr_product(w1, w2)
