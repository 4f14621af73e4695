"""FlatGroups: the optimizer on one flat tensor per group gives the per-tensor result."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from library.training.flat_params import FlatGroups, can_flatten
from library.training.optimizers import resolve_class


def _params(seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 32), (32, 4), (4, 8, 3, 3), (16, 4, 1, 1)]
    return [nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def _grads(step: int, params: list[nn.Parameter]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def _train(optimizer_type: str, kwargs: dict, flat: bool, steps: int = 4):
    params = _params()
    groups = [{"params": params[:2], "lr": 1e-2}, {"params": params[2:], "lr": 1e-2}]
    flat_groups = FlatGroups(groups) if flat else None
    cls, _ = resolve_class(optimizer_type)
    opt = cls(groups, **kwargs)
    if flat_groups is not None:
        flat_groups.attach(opt)
    for step in range(steps):
        for p, g in zip(params, _grads(step, params)):
            p.grad = g
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in params], params


@pytest.mark.parametrize("optimizer_type,kwargs,tol", [
    ("AdamW", {"weight_decay": 0.1, "foreach": True}, 0.0),
    ("DAdaptAdam", {"decouple": True, "use_bias_correction": True, "weight_decay": 0.2}, 1e-6),
    ("Prodigy", {"weight_decay": 0.01}, 1e-6),
    ("Lion", {"weight_decay": 0.1}, 0.0),
])
def test_flat_optimizer_matches_per_tensor_optimizer(optimizer_type, kwargs, tol):
    ref, _ = _train(optimizer_type, kwargs, flat=False)
    ours, params = _train(optimizer_type, kwargs, flat=True)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())
    assert all(p.grad is None for p in params)  # step() scattered and cleared the module gradients


def test_module_parameters_are_reread_each_step():
    params = _params()
    groups = [{"params": params}]
    flat = FlatGroups(groups)
    opt = torch.optim.SGD(groups, lr=0.5)
    flat.attach(opt)
    with torch.no_grad():
        params[0].mul_(0.5)  # changed outside the optimizer (max-norm scaling, a loaded state)
    expected = params[0].detach() - 0.5 * 1.0
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert torch.equal(params[0].detach(), expected)
    assert len(opt.param_groups[0]["params"]) == 1
    assert opt.param_groups[0]["params"][0].numel() == sum(p.numel() for p in params)


def test_which_optimizers_are_flattened():
    assert can_flatten(resolve_class("AdamW")[0], {}, module_dropout=False)
    assert can_flatten(resolve_class("DAdaptAdam")[0], {"decouple": True}, module_dropout=False)
    assert not can_flatten(resolve_class("AdamW")[0], {}, module_dropout=True)
    assert not can_flatten(resolve_class("AdaFactor")[0], {}, module_dropout=False)
    assert not can_flatten(resolve_class("Prodigy")[0], {"slice_p": 11}, module_dropout=False)
    assert not can_flatten(resolve_class("torch.optim.RMSprop")[0], {}, module_dropout=False)
