"""LoRAHost's weight-space path (W + s·up·down folded into one op) against the adapter-by-adapter path."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from library.lora import module as lora_module
from library.lora.module import LoRAModule, attach


def _host(layer: nn.Module, ranks=(4,), seed: int = 0):
    torch.manual_seed(seed)
    root = nn.Sequential(layer)
    adapters = []
    for i, r in enumerate(ranks):
        a = LoRAModule(f"lora_{i}", layer, r, alpha=r / 2, multiplier=0.7 - i)
        nn.init.normal_(a.lora_up.weight, std=0.1)
        adapters.append(a)
        attach(root, "0", a)
    return root, adapters


def _run(root, adapters, x, weight_space: bool, monkeypatch):
    monkeypatch.setattr(lora_module, "WEIGHT_SPACE_MAX_MACS", 1 << 40 if weight_space else -1)
    x = x.clone().requires_grad_()
    out = root(x)
    params = [x] + [p for a in adapters for p in (a.lora_down.weight, a.lora_up.weight)]
    grads = torch.autograd.grad(out.square().sum(), params)
    return out.detach(), grads


@pytest.mark.parametrize("layer,shape", [
    (nn.Linear(32, 48), (2, 77, 32)),
    (nn.Conv2d(32, 16, 1), (2, 32, 8, 8)),
    (nn.Conv2d(8, 16, 3, stride=2, padding=1), (2, 8, 9, 9)),
])
def test_weight_space_equals_adapter_path_values_and_gradients(layer, shape, monkeypatch):
    root, adapters = _host(layer, ranks=(4, 2))
    x = torch.randn(shape)
    out_w, grads_w = _run(root, adapters, x, True, monkeypatch)
    out_a, grads_a = _run(root, adapters, x, False, monkeypatch)
    assert out_w.shape == out_a.shape
    assert (out_w - out_a).abs().max() < 1e-5
    for gw, ga in zip(grads_w, grads_a):
        assert (gw - ga).abs().max() < 1e-4 * max(1.0, ga.abs().max().item())


def test_zero_up_weights_give_the_base_output_bit_for_bit(monkeypatch):
    layer = nn.Linear(32, 32)
    x = torch.randn(2, 10, 32)
    expected = layer(x)
    root = nn.Sequential(layer)
    attach(root, "0", LoRAModule("lora", layer, 4))  # fresh: up is zero
    monkeypatch.setattr(lora_module, "WEIGHT_SPACE_MAX_MACS", 1 << 40)
    assert torch.equal(root(x), expected)


def test_dropout_half_precision_and_large_layers_take_the_adapter_path(monkeypatch):
    calls = []
    original = LoRAModule.delta

    def counting(self, x):
        calls.append(self.lora_name)
        return original(self, x)

    monkeypatch.setattr(LoRAModule, "delta", counting)
    layer = nn.Linear(16, 16)
    root, (adapter,) = _host(layer)
    x = torch.randn(3, 16)
    root(x)
    assert calls == []  # small fp32 layer: weight space, no per-adapter call
    adapter.dropout = 0.1
    root.train()
    root(x)
    assert calls == ["lora_0"]
    adapter.dropout = None
    monkeypatch.setattr(lora_module, "WEIGHT_SPACE_MAX_MACS", 10)
    root(x)
    assert calls == ["lora_0", "lora_0"]
    monkeypatch.setattr(lora_module, "WEIGHT_SPACE_MAX_MACS", 1 << 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        root(x)
    assert calls == ["lora_0"] * 3


def test_disabled_and_zero_multiplier_adapters_add_nothing(monkeypatch):
    layer = nn.Linear(8, 8)
    x = torch.randn(4, 8)
    expected = layer(x)
    root, adapters = _host(layer, ranks=(2, 2))
    adapters[0].enabled = False
    adapters[1].multiplier = 0.0
    monkeypatch.setattr(lora_module, "WEIGHT_SPACE_MAX_MACS", 1 << 40)
    assert torch.equal(root(x), expected)
