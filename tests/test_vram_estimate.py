"""The VRAM estimate's exact parts (weights, LoRA parameters, gradients, optimizer states), its tracer and its plan text."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from library.config import TrainConfig
from library.lora.from_config import network_from_config
from library.models.builtin import build_tiny_bundle
from library.training import vram_estimate as ve
from library.training import vram_plan as vp


def _cfg(**kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path="tiny", resolution="64", train_batch_size=2, optimizer_type="AdamW",
                learning_rate=1e-4, network_dim=8, cache_latents=True)
    return TrainConfig(**{**base, **kw})


def _real_network(cfg: TrainConfig):
    """The network as the trainer builds it on real tensors: counted independently of the estimator."""
    bundle = build_tiny_bundle()
    network = network_from_config(cfg, bundle.unet, bundle.text_encoder)
    network.apply_to()
    return bundle, network


@pytest.mark.parametrize("precision,width", [("no", 4), ("bf16", 2), ("fp16", 2)])
def test_weight_bytes_follow_the_training_dtype(precision, width):
    sk = ve.build_skeleton(_cfg(mixed_precision=precision))
    bundle = build_tiny_bundle()
    assert sk.weights["unet"] == sum(p.numel() for p in bundle.unet.parameters()) * width
    te_params = sum(p.numel() for p in bundle.text_encoder.parameters()) * width
    te_buffers = sum(b.numel() * b.element_size() for b in bundle.text_encoder.buffers())
    assert sk.weights["text_encoder"] == te_params + te_buffers
    assert sk.weights["vae"] == sum(p.numel() for p in bundle.vae.parameters()) * 4  # the VAE stays float32


@pytest.mark.parametrize("extra", [{}, {"network_train_unet_only": True}, {"network_dim": 32, "network_args": ["conv_dim=4"]},
                                   {"full_bf16": True, "mixed_precision": "bf16"}])
def test_lora_parameter_and_gradient_bytes_are_exact(extra):
    cfg = _cfg(**extra)
    _, network = _real_network(cfg)
    width = 2 if cfg.full_bf16 else 4
    expected = sum(p.numel() for p in network.parameters()) * width
    sk = ve.build_skeleton(cfg)
    assert ve.storage_bytes(sk.network.parameters()) == expected
    assert ve.storage_bytes(ve.trainable_parameters(cfg, sk.network)) == expected


@pytest.mark.parametrize("optimizer,args,per_param", [
    ("AdamW", [], 2), ("Lion", [], 1), ("SGDNesterov", [], 1),
    ("DAdaptAdam", ["decouple=True"], 3), ("Prodigy", [], 4)])
def test_optimizer_state_bytes_match_a_real_step(optimizer, args, per_param):
    cfg = _cfg(optimizer_type=optimizer, optimizer_args=args, learning_rate=1.0 if optimizer in ("DAdaptAdam", "Prodigy") else 1e-4)
    _, network = _real_network(cfg)
    params = [p for g in network.prepare_optimizer_params(None, None, cfg.learning_rate) for p in g["params"]]
    from library.training.optimizers import build_optimizer

    opt = build_optimizer(cfg.optimizer_type, args, [{"params": params}], cfg.learning_rate).optimizer
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    opt.step()
    measured = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                   if isinstance(t, torch.Tensor) and t.dim() > 0)
    sk = ve.build_skeleton(cfg)
    counted, note = ve.optimizer_state_bytes(cfg, ve.trainable_parameters(cfg, sk.network), ve.zero_initialised(sk.network))
    assert counted == measured
    ups = sum(a.lora_up.weight.numel() for a in network.adapters)
    # Prodigy keeps a scalar instead of a copy of a parameter that starts at zero
    assert measured == per_param * 4 * sum(p.numel() for p in params) - (4 * ups if optimizer == "Prodigy" else 0)
    assert "counted from one step" in note


def test_live_bytes_counts_new_storages_once_and_subtracts_freed_ones():
    kept = torch.zeros(1000)
    with ve.LiveBytes([kept]) as live:
        view = kept[:10] * 1  # 40 new bytes
        a = torch.empty(1000)  # 4000
        b = a.view(10, 100)  # a view: nothing new
        assert live.live == 4040
        del a, b
        c = torch.empty(500, dtype=torch.float64)  # 4000, after the 4000 above were freed
        assert live.live == 4040 and live.peak == 4040
        del c, view
    assert live.live == 0 and live.peak == 4040


@pytest.mark.slow
def test_traced_activations_grow_with_batch_and_shrink_with_checkpointing():
    small = ve.estimate_vram(_cfg(train_batch_size=1))
    large = ve.estimate_vram(_cfg(train_batch_size=4))
    assert 0 < small.activations < large.activations
    assert large.activations_other < large.activations / 2  # with checkpointing (the other setting) far less is kept
    ckpt = ve.estimate_vram(_cfg(train_batch_size=4, gradient_checkpointing=True))
    # the same two traces in the other order (a first trace leaves a few small caches behind: within 2%)
    assert ckpt.activations == pytest.approx(large.activations_other, rel=0.02)
    assert ckpt.activations_other == pytest.approx(large.activations, rel=0.02)
    assert large.total == large.training_peak or large.total == large.caching_peak + large.workspace


def _estimate(**kw) -> ve.VramEstimate:
    base = dict(resolution=(512, 512), batch=8, gradient_checkpointing=False, weights={"unet": 2 * 10**9, "text_encoder": 10**8},
                vae_bytes=3 * 10**8, lora_params=10**7, lora_param_count=2_500_000, gradients=10**7,
                optimizer_states=2 * 10**7, optimizer_note="AdamW", activations=9 * 10**9, activations_other=3 * 10**9,
                caching_peak=0, workspace=0)
    return ve.VramEstimate(**{**base, **kw})


def test_total_sums_the_parts_and_cards_include_the_cuda_context():
    est = _estimate()
    assert est.total == 2 * 10**9 + 10**8 + 10**7 + 10**7 + 2 * 10**7 + 9 * 10**9
    assert est.with_checkpointing_flipped() == est.total - 6 * 10**9
    assert vp.card_fits(est.total) == {8: False, 12: True, 16: True, 24: True, 48: True, 80: True}
    assert vp.card_fits(8 * 2**30 - vp.CUDA_CONTEXT_BYTES)[8] and not vp.card_fits(8 * 2**30)[8]
    assert _estimate(caching_peak=20 * 10**9).total == 20 * 10**9


def test_plan_text_names_the_parts_and_what_would_fit():
    cfg = _cfg(resolution="512", train_batch_size=8, mixed_precision="bf16")
    text = vp.format_estimate(cfg, _estimate())
    assert "fits: 12 GB, 16 GB, 24 GB, 48 GB, 80 GB; not 8 GB" in text
    assert "with --gradient_checkpointing: ~5.14 GB, fits 8 GB" in text
    assert "with --train_batch_size 1: ~3.27 GB, fits 8 GB" in text
    assert "optimizer states" in text and "activations (traced)" in text
    fitting = vp.format_estimate(dataclasses.replace(cfg, gradient_checkpointing=True), _estimate(activations=10**9))
    assert "with --" not in fitting


def test_gui_plan_panel_shows_the_estimate(tmp_path):
    from gui.checks import PLAN_FIELDS, plan_text
    from gui.safety import PathGuard
    from library.world.bucket_dataset import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", count=4)
    cfg = _cfg(train_data_dir=str(data), caption_extension=".txt", output_dir=str(tmp_path / "out"))
    text = plan_text(cfg, PathGuard.from_dirs([tmp_path]))
    assert "total optimizer steps" in text and "Expected peak GPU memory (64x64, batch 2" in text
    assert {"mixed_precision", "gradient_checkpointing", "optimizer_type", "network_dim"} <= set(PLAN_FIELDS)
