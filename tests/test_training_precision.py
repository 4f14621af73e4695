"""Mixed precision as users run it: fused AdamW on CUDA, fp16 loss scaling without read-backs, device paths."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from library.config import TrainConfig
from library.lora.module import LoRAModule
from library.training.flat_params import FlatGroups
from library.training.optimizers import build_optimizer, speed_kwargs
from library.training.setup import install_device_paths
from library.training.trainer import train


@pytest.mark.parametrize("cls, kwargs, device, expected", [
    (torch.optim.AdamW, {}, "cuda", {"fused": True}),
    (torch.optim.Adam, {}, "cuda", {"fused": True}),
    (torch.optim.AdamW, {}, "cpu", {"foreach": True}),
    (torch.optim.SGD, {}, "cuda", {"foreach": True}),  # no fused SGD kernel we rely on
    (torch.optim.AdamW, {"fused": False}, "cuda", {}),  # the user's choice stands
    (torch.optim.AdamW, {"foreach": False}, "cpu", {}),
    (LoRAModule, {}, "cuda", {}),  # not a torch.optim class: left alone
])
def test_speed_kwargs(cls, kwargs, device, expected) -> None:
    assert speed_kwargs(cls, kwargs, device) == expected


def _params() -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [nn.Parameter(torch.randn(4, 3, generator=gen)), nn.Parameter(torch.randn(5, generator=gen))]


def test_fp16_loss_scaling_with_fused_adamw_matches_unscaled_and_skips_overflow(monkeypatch) -> None:
    """GradScaler on the CPU (torch.amp.GradScaler("cpu")) with the fused AdamW a CUDA run gets: a scaled
    step equals the unscaled one, an overflowing step leaves the parameters and halves the scale,
    and neither reads a value back to the host (fused optimizers take found_inf on the device)."""
    grads = [torch.full((4, 3), 0.5), torch.full((5,), -0.25)]
    ref = _params()
    ref_opt = torch.optim.AdamW(ref, lr=0.1, fused=True)
    for p, g in zip(ref, grads):
        p.grad = g.clone()
    ref_opt.step()

    params = _params()
    groups = [{"params": params}]
    flat = FlatGroups(groups)
    choice = build_optimizer("AdamW", ["fused=True"], groups, 0.1)
    flat.attach(choice.optimizer)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    reads: list[str] = []
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append("item") or 0.0)

    def step(overflow: bool) -> None:
        loss = sum((p * g).sum() for p, g in zip(params, grads))  # d loss / d p = g
        scaler.scale(loss * (float("inf") if overflow else 1.0)).backward()
        flat.gather()
        scaler.step(choice.optimizer)
        scaler.update()
        flat.finish_step()

    reads_before = list(reads)
    step(overflow=False)
    for p, r in zip(params, ref):
        assert torch.allclose(p.detach(), r.detach(), rtol=0, atol=1e-6)
    kept = [p.detach().clone() for p in params]
    step(overflow=True)
    assert all(torch.equal(p.detach(), k) for p, k in zip(params, kept))
    monkeypatch.undo()
    assert scaler.get_scale() == 2.0 ** 9
    assert reads == reads_before  # get_scale() above ran after the patch was undone


def test_cuda_gets_sdpa_attention_and_no_cpu_convolution_path() -> None:
    from diffusers.models.attention_processor import Attention

    from library.models.builtin import build_tiny_bundle
    from library.training.attention import LeanAttnProcessor

    unet = build_tiny_bundle().unet
    install_device_paths(unet, torch.device("cuda"))  # patches modules only; nothing moves
    convs = [m for m in unet.modules() if type(m) is nn.Conv2d]
    assert convs and not any("_conv_forward" in m.__dict__ for m in convs)
    attns = [m for m in unet.modules() if isinstance(m, Attention)]
    assert attns and all(isinstance(a.processor, LeanAttnProcessor) for a in attns)

    cpu_unet = build_tiny_bundle().unet
    install_device_paths(cpu_unet, torch.device("cpu"))
    assert all("_conv_forward" in m.__dict__ for m in cpu_unet.modules() if type(m) is nn.Conv2d)


def test_unet_channels_last_trains(shapes_data: Path, tmp_path: Path) -> None:
    from library.data.prepare import prepare_data
    from library.training.setup import build_run

    cfg = TrainConfig(pretrained_model_name_or_path="tiny", train_data_dir=str(shapes_data), output_dir=str(tmp_path),
                      output_name="t", caption_extension=".txt", resolution="64", enable_bucket=True, min_bucket_reso=64,
                      max_bucket_reso=128, train_batch_size=2, max_train_steps=2, cache_latents=True, seed=1,
                      unet_channels_last=True)
    parts = build_run(cfg, prepare_data(cfg), seed=1)
    conv = parts.bundle.unet.conv_in
    weight = conv.base_layer.weight if hasattr(conv, "base_layer") else conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    result = train(cfg)
    assert result.global_step == 2 and result.final_file.is_file()


@pytest.mark.parametrize("full_bf16, lora_dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_bf16_base_weights_with_fp32_lora_unless_full_bf16(shapes_data: Path, tmp_path: Path, full_bf16: bool,
                                                           lora_dtype: torch.dtype) -> None:
    """sd-scripts' rule: mixed_precision sets the base weights' dtype; the LoRA stays fp32 unless --full_bf16."""
    from library.data.prepare import prepare_data
    from library.training.setup import build_run

    cfg = TrainConfig(pretrained_model_name_or_path="tiny", train_data_dir=str(shapes_data), output_dir=str(tmp_path),
                      caption_extension=".txt", resolution="64", enable_bucket=True, min_bucket_reso=64,
                      max_bucket_reso=128, train_batch_size=2, cache_latents=True, seed=1, mixed_precision="bf16",
                      full_bf16=full_bf16)
    parts = build_run(cfg, prepare_data(cfg), seed=1)
    base = [m.weight for m in parts.bundle.unet.modules() if type(m) is nn.Linear]
    assert base and all(w.dtype is torch.bfloat16 for w in base)
    assert {p.dtype for p in parts.network.parameters()} == {lora_dtype}
    assert next(parts.bundle.vae.parameters()).dtype is torch.float32  # the VAE stays fp32
