"""SDXL base 1.0 shipped configs: built on the meta device they have exactly the real model's size.

The parameter counts are the public ones of stabilityai/stable-diffusion-xl-base-1.0:
UNet 2,567,463,684; CLIP ViT-L text 123,060,480; OpenCLIP ViT-bigG text with projection
694,659,840; VAE 83,653,863.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from library.models.configs import FAMILIES, family_components, load_family_configs, load_shipped_config


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sdxl_config_facts():
    unet = load_shipped_config("sdxl", "unet")
    assert unet["addition_embed_type"] == "text_time"
    assert unet["addition_time_embed_dim"] == 256
    assert unet["projection_class_embeddings_input_dim"] == 2816  # 1280 pooled + 6 ids * 256
    assert unet["transformer_layers_per_block"] == [1, 2, 10]
    assert unet["cross_attention_dim"] == 768 + 1280
    assert load_shipped_config("sdxl", "vae")["scaling_factor"] == 0.13025
    te2 = load_shipped_config("sdxl", "text_encoder_2")
    assert (te2["hidden_size"], te2["num_hidden_layers"], te2["projection_dim"]) == (1280, 32, 1280)
    assert family_components("sdxl")[-1] == "text_encoder_2"
    assert "sdxl" not in FAMILIES  # SD1.x weight tools iterate FAMILIES
    with pytest.raises(ValueError, match="text_encoder_2"):
        load_shipped_config("sd15", "text_encoder_2")


def test_sdxl_sized_models_match_public_parameter_counts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = load_family_configs("sdxl")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        te1 = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    assert _count(unet) == 2_567_463_684
    assert _count(te1) == 123_060_480
    assert _count(te2) == 694_659_840
    assert _count(vae) == 83_653_863
    assert len(unet.state_dict()) == 1680  # model.diffusion_model.* keys in sd_xl_base_1.0
    assert len(vae.state_dict()) == 248  # first_stage_model.* keys


def test_tiny_sdxl_runs_the_sdxl_conditioning_fast():
    """tiny-sdxl: SDXL's block layout at tiny widths; a forward pass with text_time conditioning."""
    import time

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    start = time.perf_counter()
    configs = load_family_configs("tiny-sdxl")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(configs["unet"])
    te1 = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    assert time.perf_counter() - start < 2.0
    real = load_shipped_config("sdxl", "unet")
    for key in ("down_block_types", "up_block_types", "transformer_layers_per_block", "addition_embed_type"):
        assert configs["unet"][key] == real[key]
    ids = torch.tensor([[49406, 320, 49407] + [49407] * 74])
    hidden = torch.cat([te1(ids, output_hidden_states=True).hidden_states[-2],
                        te2(ids, output_hidden_states=True).hidden_states[-2]], dim=-1)
    pooled = te2(ids).text_embeds
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
    out = unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=hidden,
               added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    assert out.shape == (1, 4, 8, 8)
    assert torch.isfinite(out).all()
