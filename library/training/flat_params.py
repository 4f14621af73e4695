"""The optimizer works on one flat tensor per parameter group instead of hundreds of small ones.

A LoRA has two small tensors per adapted layer (408 on the tiny model). Optimizers
that loop over parameters in Python (DAdaptAdam, Prodigy) or launch a kernel per
tensor (even foreach AdamW, gradient clipping) then cost more than the model's own
backward pass. For optimizers whose update is elementwise plus group-wide sums, one
concatenated tensor gives the same result (sums only change their rounding order).

The LoRA modules keep their own parameters (files, merging and sampling see nothing
different). Each step `gather` copies parameters and gradients into the flat tensors,
the optimizer steps there, and `scatter` copies the new values back. Because `gather`
always re-reads the module parameters, anything that changes them between steps
(max-norm scaling, loading a saved state) is picked up.

One difference from the per-tensor path: a parameter the forward pass never reached
(no gradient, e.g. text-encoder layers past clip_skip) gets a zero gradient instead
of being skipped, so decoupled weight decay still shrinks it. Runs with module dropout,
where that happens at random, keep the per-tensor path.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

# (top-level package, class) of update rules that are elementwise plus sums over the whole group.
# Not Adafactor (factors each tensor's 2-D shape) nor bitsandbytes (per-tensor quantisation blocks).
ELEMENTWISE_OPTIMIZERS = {
    ("torch", "AdamW"), ("torch", "Adam"), ("torch", "SGD"), ("library", "Lion"),
    ("dadaptation", "DAdaptAdam"), ("dadaptation", "DAdaptLion"), ("dadaptation", "DAdaptSGD"),
    ("prodigyopt", "Prodigy"),
}


def can_flatten(optimizer_class: type, kwargs: dict[str, Any], module_dropout: bool) -> bool:
    """True when the optimizer's result does not depend on how its parameters are split into tensors."""
    if module_dropout:
        return False
    if optimizer_class.__name__ == "Prodigy" and kwargs.get("slice_p", 1) != 1:
        return False  # slice_p samples every n-th element of each tensor
    return (optimizer_class.__module__.split(".")[0], optimizer_class.__name__) in ELEMENTWISE_OPTIMIZERS


class FlatGroups:
    """Per parameter group: the module parameters (`members`) and the flat Parameter the optimizer sees."""

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        self.members: list[list[nn.Parameter]] = []
        self.flats: list[nn.Parameter] = []
        self.grads: list[torch.Tensor] = []  # persistent flat gradient buffers
        self.views: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []  # (value views, gradient views)
        for group in groups:
            params = list(group["params"])
            if len({(p.dtype, p.device) for p in params}) != 1:
                continue  # mixed precision or devices: leave this group as it is
            flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
            grad = torch.zeros_like(flat)
            sizes = [p.numel() for p in params]
            self.members.append(params)
            self.flats.append(flat)
            self.grads.append(grad)
            self.views.append(([v.view_as(p) for v, p in zip(flat.detach().split(sizes), params)],
                               [v.view_as(p) for v, p in zip(grad.split(sizes), params)]))
            group["params"] = [flat]
        self._gathered = False

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Make `optimizer.step()` gather before and scatter after by itself, wherever it is called."""
        optimizer.register_step_pre_hook(lambda *_: None if self._gathered else self.gather())
        optimizer.register_step_post_hook(lambda *_: self.scatter())

    @torch.no_grad()
    def gather(self) -> None:
        """Current parameter values and gradients into the flat tensors (missing gradients as zeros).

        The trainer calls this before clipping and averaging gradients; otherwise the
        optimizer's step calls it.
        """
        self._gathered = True
        for params, flat, grad, (values, grad_views) in zip(self.members, self.flats, self.grads, self.views):
            torch._foreach_copy_(values, params)
            grads = [p.grad for p in params]
            if any(g is None for g in grads):
                grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            torch._foreach_copy_(grad_views, grads)
            flat.grad = grad

    def finish_step(self) -> None:
        """After the optimizer step (or a skipped one): no module parameter keeps a gradient."""
        if self._gathered:  # step() never ran, so scatter did not clear them
            self._gathered = False
            self._clear_grads()

    def _clear_grads(self) -> None:
        for params in self.members:
            for p in params:
                p.grad = None

    @torch.no_grad()
    def scatter(self) -> None:
        """The optimizer's new values back into the module parameters; their gradients are cleared."""
        self._gathered = False
        for params, (values, _) in zip(self.members, self.views):
            torch._foreach_copy_(params, values)
        self._clear_grads()
