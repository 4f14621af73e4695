"""SD2.x: shipped configs (512-base ε, 768-v v), single-file and folder loading, key layout, round trips."""
from __future__ import annotations

import pytest
import torch

from library.models.configs import load_family_configs
from library.models.modules import build_component


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("family, prediction, size", [("sd2-768-v", "v_prediction", 96), ("sd2-512", "epsilon", 64)])
def test_sd2_configs_have_the_public_sizes(family, prediction, size):
    """stabilityai/stable-diffusion-2-1(-base): UNet 865,910,724 parameters (the published 865.9M),
    VAE 83,653,863 (the SD VAE, as SD1.5's), text encoder 340,387,840 = OpenCLIP ViT-H's text tower
    as diffusers keeps it: 23 of 24 layers x 12,596,224 + token embedding 49408x1024 + positions
    77x1024 + final norm 2x1024."""
    configs = load_family_configs(family)
    assert configs["scheduler"]["prediction_type"] == prediction
    assert configs["unet"]["sample_size"] == size
    unet = build_component("unet", configs["unet"], empty=True)
    te = build_component("text_encoder", configs["text_encoder"], empty=True)
    vae = build_component("vae", configs["vae"], empty=True)
    assert _count(unet) == 865_910_724
    layer = 4 * 1024 * 1024 + 4 * 1024 + 2 * 1024 * 4096 + 4096 + 1024 + 4 * 1024
    assert layer == 12_596_224
    assert _count(te) == 23 * layer + 49408 * 1024 + 77 * 1024 + 2 * 1024 == 340_387_840
    assert _count(vae) == 83_653_863
    assert unet.config.use_linear_projection and unet.config.cross_attention_dim == 1024
    assert list(unet.config.attention_head_dim) == [5, 10, 20, 20]
    assert te.config.hidden_act == "gelu" and te.config.num_hidden_layers == 23
    assert te.config.pad_token_id == 0  # OpenCLIP pads with "!" (id 0)
