"""A third-party loader reads our files as we do: diffusers' `load_lora_weights` on the tiny pipeline.

For our LoRA and for the sd-scripts fixture, the UNet and text-encoder outputs of the
diffusers pipeline after `load_lora_weights` equal those of our own merged model at
weight 1.0 (fp32, 5e-6).
"""
from __future__ import annotations

import copy

import pytest
import torch

from library.lora.network import LoRANetwork
from library.models import build_tiny_bundle

pytest.importorskip("peft", reason="diffusers' load_lora_weights needs peft (pip install peft)")



def _pipeline(bundle):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=bundle.vae, text_encoder=bundle.text_encoder, tokenizer=bundle.tokenizer, unet=bundle.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@torch.no_grad()
def _outputs(text_encoder, unet):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49408, (2, 77), generator=g)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([700, 30])
    hidden = text_encoder(ids).last_hidden_state
    cond = torch.randn(2, 77, 32, generator=g)  # same UNet input for both sides
    return hidden, unet(x, t, cond).sample


def _compare_with_diffusers(path):
    bundle = build_tiny_bundle(0)
    ours_unet, ours_te = copy.deepcopy(bundle.unet), copy.deepcopy(bundle.text_encoder)
    base_hidden, base_out = _outputs(bundle.text_encoder, bundle.unet)
    pipe = _pipeline(bundle)
    pipe.load_lora_weights(str(path))
    theirs = _outputs(pipe.text_encoder, pipe.unet)
    network = LoRANetwork.from_weights(path, ours_unet, ours_te)
    network.merge_to(1.0)
    ours = _outputs(ours_te, ours_unet)
    # the LoRA must change both parts, or the comparison proves nothing
    assert (theirs[0] - base_hidden).abs().max() > 1e-3
    assert (theirs[1] - base_out).abs().max() > 1e-3
    assert (theirs[0] - ours[0]).abs().max() < 5e-6
    assert (theirs[1] - ours[1]).abs().max() < 5e-6


def test_diffusers_loads_sdscripts_fixture_like_we_do(sdscripts_lora_dir):
    _compare_with_diffusers(sdscripts_lora_dir / "tinylora.safetensors")


@pytest.mark.parametrize("conv_dim", [None, 2], ids=["lora", "locon"])
def test_diffusers_loads_our_lora_like_we_do(tmp_path, conv_dim):
    bundle = build_tiny_bundle(0)
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=2, conv_dim=conv_dim, conv_alpha=1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for adapter in network.adapters:
            adapter.lora_up.weight.copy_(torch.randn(adapter.lora_up.weight.shape, generator=g) * 0.05)
    path = tmp_path / "ours.safetensors"
    network.save_weights(path, "fp32", {"ss_network_dim": "4", "ss_network_alpha": "2"})
    _compare_with_diffusers(path)
