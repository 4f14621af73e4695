"""Building the three diffusers/transformers modules from shipped configs.

`empty=True` builds them with parameters on the `meta` device (no memory, no
init cost): used to learn an architecture's key names and shapes, and as the
skeleton that real weights are assigned into when loading a checkpoint.
The UNet and VAE have no buffers, so they are built entirely on `meta` (the
fastest way); the text encoder keeps real buffers (`init_empty_weights`), so
its non-persistent `position_ids` are valid after weights are assigned.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from library.models.configs import load_family_configs


def build_unet(config: dict[str, Any], empty: bool = False) -> UNet2DConditionModel:
    if empty:
        with torch.device("meta"):
            return UNet2DConditionModel.from_config(config)
    return UNet2DConditionModel.from_config(config)


def build_vae(config: dict[str, Any], empty: bool = False) -> AutoencoderKL:
    if empty:
        with torch.device("meta"):
            return AutoencoderKL.from_config(config)
    return AutoencoderKL.from_config(config)


def build_text_encoder(config: dict[str, Any], empty: bool = False) -> CLIPTextModel:
    te_config = CLIPTextConfig(**config)
    if empty:
        with init_empty_weights():
            return CLIPTextModel(te_config)
    return CLIPTextModel(te_config)


def build_text_encoder_2(config: dict[str, Any], empty: bool = False) -> CLIPTextModelWithProjection:
    """SDXL's second text encoder (OpenCLIP ViT-bigG in HF layout): its projected pooled output
    is the `text_embeds` half of SDXL's added conditioning."""
    te_config = CLIPTextConfig(**config)
    if empty:
        with init_empty_weights():
            return CLIPTextModelWithProjection(te_config)
    return CLIPTextModelWithProjection(te_config)


_BUILDERS = {"unet": build_unet, "vae": build_vae, "text_encoder": build_text_encoder,
             "text_encoder_2": build_text_encoder_2}


def build_component(component: str, config: dict[str, Any], empty: bool = False) -> torch.nn.Module:
    return _BUILDERS[component](config, empty=empty)


@functools.lru_cache(maxsize=32)
def expected_shapes(family: str, component: str) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of one shipped architecture with its shape (built on meta, cached)."""
    config = load_family_configs(family)[component]
    module = build_component(component, config, empty=True)
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def build_empty_architecture(family: str) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """UNet and text encoder of a shipped architecture (`sd15`) on the meta device: every layer's
    name and shape without weights, so a LoRA's keys can be checked against SD1.5 in a second
    instead of loading a 4 GB checkpoint."""
    configs = load_family_configs(family)
    return build_unet(configs["unet"], empty=True), build_text_encoder(configs["text_encoder"], empty=True)


def assign_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load tensors into a (meta) skeleton by assignment: no copy, no random init."""
    module.load_state_dict(state_dict, strict=True, assign=True)
    left = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left without values after loading: {left[:3]}")


def cast_module(module: torch.nn.Module, dtype: torch.dtype | None,
                device: torch.device | str | None = None) -> torch.nn.Module:
    """Cast floating-point weights to `dtype` (and move them to `device`).

    diffusers' own `.to` with a dtype warns on every call that an empty list of
    modules "should be kept in float32"; torch's does the same work silently.
    """
    return torch.nn.Module.to(module, device=device, dtype=dtype)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Base-model weights are frozen in eval mode; a LoRA trainer adds its own trainable params."""
    return module.eval().requires_grad_(False)
