"""Lion, written out because no Lion package is a dependency.

Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2):
    c = β1·m + (1 − β1)·g
    θ ← θ·(1 − lr·λ) − lr·sign(c)
    m ← β2·m + (1 − β2)·g
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class Lion(torch.optim.Optimizer):
    """Sign-of-momentum optimizer; use a learning rate 3–10× smaller than AdamW's."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        if lr <= 0:
            raise ValueError(f"Lion: lr must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: betas must be in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                m = state["exp_avg"]
                g = p.grad
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
                update = m.mul(beta1).add_(g, alpha=1.0 - beta1).sign_()
                p.add_(update, alpha=-group["lr"])
                m.mul_(beta2).add_(g, alpha=1.0 - beta2)
        return loss
