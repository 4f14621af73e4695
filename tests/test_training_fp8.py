"""--fp8_base: float8 storage halves the frozen weights of bf16; outputs stay close; LoRA math unchanged."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from library.config import TrainConfig
from library.config_validate import validate
from library.errors import ConfigError
from library.lora.module import LoRAHost, LoRAModule
from library.models.builtin import build_tiny_bundle
from library.training.fp8 import FP8_DTYPE, store_fp8, weight_bytes
from library.training.trainer import train

# Tolerances, measured on the tiny model's random weights (e4m3 keeps 3 mantissa bits: up to 6.25% per
# weight): one Linear layer's output within 5% (relative L2) of bf16, the whole UNet's within 15% (0.094 seen).
LAYER_TOL, UNET_TOL = 0.05, 0.15


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.fixture(scope="module")
def unets() -> tuple[nn.Module, nn.Module]:
    bf16 = build_tiny_bundle().unet.to(torch.bfloat16).requires_grad_(False)
    fp8 = copy.deepcopy(bf16)
    store_fp8(fp8)
    return bf16, fp8


def test_stored_weights_take_half_the_bytes_of_bf16(unets) -> None:
    bf16, fp8 = unets
    layers = [(a, b) for a, b in zip(bf16.modules(), fp8.modules()) if type(a) in (nn.Linear, nn.Conv2d)]
    assert layers and all(b.weight.dtype is FP8_DTYPE for _, b in layers)
    assert sum(b.weight.nbytes for _, b in layers) * 2 == sum(a.weight.nbytes for a, _ in layers)
    assert weight_bytes(fp8) <= 0.52 * weight_bytes(bf16)  # norms and biases stay bf16


def test_unet_output_within_tolerance_of_bf16(unets) -> None:
    bf16, fp8 = unets
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=gen).bfloat16()
    cond = torch.randn(2, 77, 32, generator=gen).bfloat16()
    t = torch.tensor([10, 500])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = bf16(x, t, cond).sample, fp8(x, t, cond).sample
    assert out.dtype is torch.bfloat16 and torch.isfinite(out).all()
    assert 0 < rel_err(out, ref) < UNET_TOL


def test_lora_on_an_fp8_layer_keeps_its_math_and_gradients() -> None:
    gen = torch.Generator().manual_seed(1)
    base = nn.Linear(64, 48).requires_grad_(False)
    base.weight.data.normal_(0, 0.05, generator=gen)
    base = base.to(torch.bfloat16)
    base8 = copy.deepcopy(base)
    store_fp8(base8)
    grads = []
    outs = []
    for layer in (base, base8):
        adapter = LoRAModule("lora_x", layer, rank=4, alpha=4)
        torch.manual_seed(0)
        nn.init.normal_(adapter.lora_down.weight, std=0.1)
        nn.init.normal_(adapter.lora_up.weight, std=0.1)
        host = LoRAHost(layer)
        host.adapters.append(adapter)
        x = torch.randn(3, 64, generator=torch.Generator().manual_seed(2), requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if layer is base8:
                assert host._weight_with_adapters(layer, x) is None  # no folding into a float8 weight
            out = host(x)
        out.float().square().sum().backward()
        assert adapter.lora_up.weight.dtype is torch.float32 and adapter.lora_up.weight.grad is not None
        grads.append((adapter.lora_up.weight.grad.clone(), x.grad.clone()))
        outs.append(out.detach())
    assert rel_err(outs[1], outs[0]) < LAYER_TOL
    assert rel_err(grads[1][0], grads[0][0]) < LAYER_TOL  # LoRA gradient
    assert rel_err(grads[1][1], grads[0][1]) < LAYER_TOL  # input gradient through the float8 weight


def test_conv_backward_through_fp8_weights_matches_bf16() -> None:
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1).requires_grad_(False).to(torch.bfloat16)
    conv8 = copy.deepcopy(conv)
    store_fp8(conv8)
    results = []
    for layer in (conv, conv8):
        x = torch.randn(2, 8, 9, 9, generator=torch.Generator().manual_seed(3), requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        out.float().sum().backward()
        results.append((out.detach(), x.grad.clone()))
    assert results[1][0].shape == results[0][0].shape and results[1][1].dtype is torch.float32
    assert rel_err(results[1][0], results[0][0]) < LAYER_TOL and rel_err(results[1][1], results[0][1]) < LAYER_TOL


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path="tiny", train_data_dir=str(data), output_dir=str(out), output_name="t",
                caption_extension=".txt", resolution="64", enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128,
                train_batch_size=2, max_train_steps=2, cache_latents=True, seed=4, fp8_base=True, mixed_precision="bf16")
    base.update(kw)
    return TrainConfig(**base)


def test_fp8_base_training_run_on_the_tiny_model(shapes_data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    result = train(_cfg(shapes_data, tmp_path))
    assert result.global_step == 2
    tensors = load_file(str(result.final_file))
    assert tensors and all(torch.isfinite(t).all() for t in tensors.values())
    assert all(t.dtype is torch.float32 for k, t in tensors.items() if k.endswith(".weight"))


def test_fp8_base_needs_mixed_precision(shapes_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp8_base"):
        validate(_cfg(shapes_data, tmp_path, mixed_precision="no"))
