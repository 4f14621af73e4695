"""LoHa: the weight delta as the Hadamard product of two low-rank products.

FedPara (Hyeon-Woo et al. 2022, "FedPara: Low-Rank Hadamard Product for Communication-Efficient
Federated Learning"), as LyCORIS `algo=loha` trains it:
    dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank
so rank r gives an effective rank up to r^2. File keys (LyCORIS, read by A1111 and ComfyUI):
`hada_w1_a` (out, r), `hada_w1_b` (r, in*kh*kw), `hada_w2_a`, `hada_w2_b` the same, `alpha`.
With `use_tucker` on a kxk conv each factor is a Tucker product instead:
`hada_t1`/`hada_t2` (r, r, kh, kw), `hada_w1_a`/`hada_w2_a` (r, out), `hada_w1_b`/`hada_w2_b` (r, in).
Initialisation (LyCORIS): w1_b, w2_b ~ N(0, 1), w1_a ~ N(0, 0.1), t ~ N(0, 0.1), w2_a = 0.
The rank alpha divides by is `hada_w1_b.shape[0]`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from library.lora.adapter import Adapter

W1A, W1B, W2A, W2B, T1, T2 = "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"


def tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Tucker-2 rebuild of a conv kernel: t (r, r, k, k) x wa (r, out) x wb (r, in) -> (out, in, k, k)."""
    return torch.einsum("i j ..., i p, j r -> p r ...", t, wa, wb)


def loha_product(w1a, w1b, w2a, w2b, t1=None, t2=None) -> torch.Tensor:
    """(w1_a w1_b) * (w2_a w2_b), or the Tucker form (Hyeon-Woo et al. 2022, FedPara); before alpha/rank."""
    if t1 is not None and t2 is not None:
        return tucker(t1, w1a, w1b) * tucker(t2, w2a, w2b)
    return (w1a @ w1b.flatten(1)) * (w2a @ w2b.flatten(1))


class LoHaModule(Adapter):
    """LyCORIS LoHa for a Linear or Conv2d layer."""

    ALGO: ClassVar[str] = "loha"
    KEYS: ClassVar[tuple[str, ...]] = (W1A, W1B, W2A, W2B, T1, T2)

    def __init__(self, name: str, layer: nn.Module, rank: int, alpha: float | None = 1.0, *,
                 use_tucker: bool = False, **kwargs) -> None:
        super().__init__(name, layer, rank, alpha, **kwargs)
        out_dim, in_dim, *kernel = self.weight_shape
        r = self.rank
        self.tucker = bool(use_tucker and kernel and any(k != 1 for k in kernel))
        if self.tucker:
            self.hada_t1 = nn.Parameter(torch.empty(r, r, *kernel))
            self.hada_t2 = nn.Parameter(torch.empty(r, r, *kernel))
            shapes = ((r, out_dim), (r, in_dim))
        else:
            flat_in = in_dim * (kernel[0] * kernel[1] if kernel else 1)
            shapes = ((out_dim, r), (r, flat_in))
        self.hada_w1_a = nn.Parameter(torch.empty(shapes[0]))
        self.hada_w1_b = nn.Parameter(torch.empty(shapes[1]))
        self.hada_w2_a = nn.Parameter(torch.empty(shapes[0]))
        self.hada_w2_b = nn.Parameter(torch.empty(shapes[1]))
        with torch.no_grad():
            if self.tucker:
                nn.init.normal_(self.hada_t1, std=0.1)
                nn.init.normal_(self.hada_t2, std=0.1)
            nn.init.normal_(self.hada_w1_b, std=1)
            nn.init.normal_(self.hada_w1_a, std=0.1)
            nn.init.normal_(self.hada_w2_b, std=1)
            nn.init.zeros_(self.hada_w2_a)

    @classmethod
    def options_from_parts(cls, parts: Mapping[str, torch.Tensor]) -> dict:
        return {"use_tucker": T1 in parts}

    @classmethod
    def parts_rank(cls, parts: Mapping[str, torch.Tensor]) -> int | None:
        return int(parts[W1B].shape[0])

    @classmethod
    def parts_problems(cls, parts: Mapping[str, torch.Tensor]) -> list[str]:
        missing = [k for k in (W1A, W1B, W2A, W2B) if k not in parts]
        if missing:
            return [f"has no {', '.join(missing)}"]
        if (T1 in parts) != (T2 in parts):
            return ["has only one of hada_t1 / hada_t2"]
        return []

    @classmethod
    def parts_product(cls, parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        f = {k: v.float() for k, v in parts.items() if k in cls.KEYS}
        return loha_product(f[W1A], f[W1B], f[W2A], f[W2B], f.get(T1), f.get(T2))

    def product(self) -> torch.Tensor:
        if self.tucker:
            return loha_product(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b,
                                self.hada_t1, self.hada_t2)
        return loha_product(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b)
