"""GPU-only checks of the CUDA training path (issue 26), on the built-in tiny model; skipped without CUDA.

The real no-sync check: `torch.cuda.set_sync_debug_mode("error")` is on while the trainer
is inside a micro-step or an optimizer step (from the second step on: the first creates
optimizer states and cuBLAS handles once), so any host-device synchronisation raises.
Whole file: well under a minute on one GPU.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from library.config import TrainConfig
from library.training.trainer import Trainer, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def config(data: Path, out: Path, **kw) -> TrainConfig:
    # no buckets: every batch has the same shape, so every step makes the same allocations; UNet-only with
    # fixed captions, so text-encoder outputs are cached too (the usual fast setup)
    base = dict(pretrained_model_name_or_path="tiny", train_data_dir=str(data), output_dir=str(out), output_name="t",
                caption_extension=".txt", resolution="64", train_batch_size=2, max_train_steps=6,
                cache_latents=True, seed=7, learning_rate=1e-3, mixed_precision="bf16", network_train_unet_only=True)
    base.update(kw)
    return TrainConfig(**base)


@contextlib.contextmanager
def sync_debug_errors():  # noqa: ANN201
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


class StepWatch:
    """Sync-debug mode inside the step methods (after the first step); memory counters after each step."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.guarded_steps = 0
        self.stats: list[dict[str, int]] = []
        self.parts = None
        for name in ("_micro_step", "_optimizer_step"):
            monkeypatch.setattr(Trainer, name, self._guard(getattr(Trainer, name)))
        after = Trainer._after_step

        def after_step(trainer: Trainer) -> None:
            after(trainer)
            self.parts = trainer.parts
            torch.cuda.synchronize()  # outside the step: only to read the counters
            stats = torch.cuda.memory_stats()
            self.stats.append({k: stats.get(k, 0) for k in ("allocation.all.allocated", "segment.all.allocated",
                                                             "num_alloc_retries")})

        monkeypatch.setattr(Trainer, "_after_step", after_step)

    def _guard(self, method):  # noqa: ANN001, ANN202
        watch = self

        def guarded(trainer: Trainer, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if trainer.pos.global_step < 1:
                return method(trainer, *args, **kwargs)
            watch.guarded_steps += 1
            with sync_debug_errors():
                return method(trainer, *args, **kwargs)

        return guarded


def test_bf16_steps_have_no_host_sync_and_no_allocation_churn(shapes_data: Path, tmp_path: Path, monkeypatch) -> None:
    watch = StepWatch(monkeypatch)
    result = train(config(shapes_data, tmp_path))  # no logging_dir: the GPU machine may lack tensorboard
    assert result.global_step == 6 and watch.guarded_steps >= 10  # 5 steps x (micro-step + optimizer step)
    parts = watch.parts
    assert parts.device.type == "cuda"
    # cached latents on the GPU, so no pinned batches and no copies in the step
    assert all(c.latents.is_cuda for c in parts.dataset.latents.values()) and not parts.pin_batches
    # fused AdamW under accelerate's wrapper
    inner = parts.optimizer.optimizer.optimizer
    assert isinstance(inner, torch.optim.AdamW) and inner.defaults["fused"] is True
    # no churn: from step 3 on every step makes the same number of allocator requests and no new segments
    allocs = [s["allocation.all.allocated"] for s in watch.stats]
    per_step = [b - a for a, b in zip(allocs[2:], allocs[3:])]
    assert len(set(per_step)) == 1, per_step
    segments = [s["segment.all.allocated"] for s in watch.stats]
    assert segments[-1] == segments[2], segments
    assert watch.stats[-1]["num_alloc_retries"] == 0
    assert result.epoch_losses and all(torch.isfinite(torch.tensor(result.epoch_losses)))


def test_fp16_with_loss_scaler_has_no_host_sync(shapes_data: Path, tmp_path: Path, monkeypatch) -> None:
    watch = StepWatch(monkeypatch)
    result = train(config(shapes_data, tmp_path, mixed_precision="fp16", max_train_steps=4))
    assert result.global_step == 4 and watch.guarded_steps >= 6
    scaler = watch.parts.accelerator.scaler
    assert scaler is not None and scaler.get_scale() > 0
    lora = list(watch.parts.network.parameters())
    assert all(p.dtype is torch.float32 and torch.isfinite(p).all() for p in lora)  # LoRA in fp32 ...
    base = [m.weight for m in watch.parts.bundle.unet.modules() if type(m) is torch.nn.Linear]
    assert base and all(w.dtype is torch.float16 for w in base)  # ... over fp16 base weights


def test_fp8_base_step_has_no_host_sync(shapes_data: Path, tmp_path: Path, monkeypatch) -> None:
    from library.training.fp8 import FP8_DTYPE

    watch = StepWatch(monkeypatch)
    result = train(config(shapes_data, tmp_path, fp8_base=True, max_train_steps=4))
    assert result.global_step == 4 and watch.guarded_steps >= 6
    unet = watch.parts.bundle.unet
    fp8 = [m for m in unet.modules() if isinstance(m, torch.nn.Linear) and m.weight.dtype is FP8_DTYPE]
    assert fp8 and all(m.weight.is_cuda for m in fp8)
    assert all(torch.isfinite(p).all() for p in watch.parts.network.parameters())


def test_lowvram_batches_come_pinned_and_copy_without_sync(shapes_data: Path, tmp_path: Path, monkeypatch) -> None:
    watch = StepWatch(monkeypatch)
    result = train(config(shapes_data, tmp_path, lowvram=True, max_train_steps=4))
    assert result.global_step == 4 and watch.guarded_steps >= 6
    parts = watch.parts
    assert parts.pin_batches and not any(c.latents.is_cuda for c in parts.dataset.latents.values())
    assert next(parts.bundle.vae.parameters()).device.type == "cpu"


def test_channels_last_and_full_bf16_steps_have_no_host_sync(shapes_data: Path, tmp_path: Path, monkeypatch) -> None:
    watch = StepWatch(monkeypatch)
    result = train(config(shapes_data, tmp_path, unet_channels_last=True, full_bf16=True, max_train_steps=4))
    assert result.global_step == 4 and watch.guarded_steps >= 6
    assert {p.dtype for p in watch.parts.network.parameters()} == {torch.bfloat16}
    inner = watch.parts.optimizer.optimizer.optimizer
    assert inner.defaults["fused"] is True  # fused AdamW over bf16 LoRA parameters


def test_text_encoder_lora_steps_have_no_host_sync(shapes_data: Path, tmp_path: Path, monkeypatch) -> None:
    """The text encoder runs in every step when its LoRA is trained (transformers' CLIP code included)."""
    watch = StepWatch(monkeypatch)
    result = train(config(shapes_data, tmp_path, network_train_unet_only=False, max_train_steps=4))
    assert result.global_step == 4 and watch.guarded_steps >= 6 and watch.parts.train_text_encoder
    assert watch.parts.dataset.text_encoder_outputs is None


def test_attention_runs_on_flash_and_memory_efficient_sdpa_kernels() -> None:
    """An SD1.5-shaped attention layer (8 heads of 40) through the lean processor, with only the fused kernels allowed."""
    from diffusers.models.attention_processor import Attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from library.training.attention import LeanAttnProcessor, install_lean_attention

    cross = Attention(query_dim=320, cross_attention_dim=768, heads=8, dim_head=40).cuda()
    self_attn = Attention(query_dim=320, heads=8, dim_head=40).cuda()
    for layer in (cross, self_attn):
        assert install_lean_attention(layer) == 1 and isinstance(layer.processor, LeanAttnProcessor)
    x = torch.randn(2, 4096, 320, device="cuda", requires_grad=True)
    ctx = torch.randn(2, 77, 768, device="cuda")
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", dtype=torch.bfloat16):
        (cross(x, ctx).float().sum() + self_attn(x).float().sum()).backward()  # raises if flash cannot run it
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        self_attn(x).sum().backward()  # fp32 (mixed_precision no): the memory-efficient kernel
    assert torch.isfinite(x.grad).all()
