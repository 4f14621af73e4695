"""Where each model family keeps its text encoders in an original (LDM / SGM) single file.

The UNet (`model.diffusion_model.`) and VAE (`first_stage_model.`) use the same layout in
SD1.x, SD2.x and SDXL (ldm_keys.py). The text encoders differ:

- SD1.x: OpenAI CLIP ViT-L in Hugging Face names under `cond_stage_model.transformer.`
  (plus CLIP's `position_ids` buffer, which the official files store).
- SD2.x: OpenCLIP ViT-H in OpenCLIP names under `cond_stage_model.model.` (fused q/k/v
  `in_proj`). SD2 conditions on the penultimate layer, so diffusers keeps 23 of the 24
  stored resblocks and drops resblock 23, `text_projection` and `logit_scale`
  (`SD_2_TEXT_ENCODER_KEYS_TO_IGNORE` in diffusers' single_file_utils). We keep those
  tensors aside (`ModelBundle.ldm_extras`) and write them back unchanged; a model that
  never had them (a diffusers folder, a built-in) gets sd-scripts' stand-ins on save:
  resblock 23 a copy of resblock 22, `text_projection` ones, `logit_scale` 1
  (`convert_text_encoder_state_dict_to_sd_v2(make_dummy_weights=True)`).
- SDXL: CLIP ViT-L in HF names under `conditioner.embedders.0.transformer.` and OpenCLIP
  ViT-bigG under `conditioner.embedders.1.model.`, all 32 layers used; its
  `text_projection` ([width, proj], applied as x @ P) is HF's `text_projection.weight`
  transposed, as diffusers converts it; `logit_scale` is kept aside like SD2's extras.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from library.models.configs import (
    architecture_of_config,
    family_components,
    load_family_configs,
)
from library.models.ldm_keys import (
    UNET_PREFIX,
    VAE_PREFIX,
    is_vae_attention_matrix,
    ldm_key_table,
)
from library.models.openclip_convert import hf_to_openclip, openclip_to_hf

Tensor = torch.Tensor
IMAGE_PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX}


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder's place and naming in a single file."""

    component: str  # "text_encoder" or "text_encoder_2" (the bundle attribute)
    prefix: str
    style: str  # "hf": Hugging Face CLIP names under `text_model.`; "openclip": OpenCLIP names
    stored_layers_beyond: int = 0  # openclip: resblocks stored after the ones the HF model holds (SD2: 1)

    @property
    def position_ids_key(self) -> str:
        return f"{self.prefix}text_model.embeddings.position_ids"


TEXT_ENCODER_SLOTS: dict[str, tuple[TextEncoderSlot, ...]] = {
    "sd1": (TextEncoderSlot("text_encoder", "cond_stage_model.transformer.", "hf"),),
    "sd2": (TextEncoderSlot("text_encoder", "cond_stage_model.model.", "openclip", stored_layers_beyond=1),),
    "sdxl": (TextEncoderSlot("text_encoder", "conditioner.embedders.0.transformer.", "hf"),
             TextEncoderSlot("text_encoder_2", "conditioner.embedders.1.model.", "openclip")),
}


def slots(architecture: str) -> tuple[TextEncoderSlot, ...]:
    return TEXT_ENCODER_SLOTS[architecture]


def text_prefixes(architecture: str) -> tuple[str, ...]:
    return tuple(s.prefix for s in slots(architecture))


def all_prefixes(architecture: str) -> tuple[str, ...]:
    """Every LDM prefix a model of this family stores weights under."""
    return (UNET_PREFIX, VAE_PREFIX) + text_prefixes(architecture)


# ---- diffusers/transformers -> LDM ----------------------------------------------------------------

def image_component_to_ldm(component: str, config: Mapping[str, Any], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """UNet or VAE weights under their LDM names (VAE mid-attention matrices as 1x1 convs)."""
    table = ldm_key_table(component, dict(config), list(state))
    out = {}
    for key, value in state.items():
        name = table[key]
        out[name] = value.reshape(*value.shape, 1, 1) if is_vae_attention_matrix(name) and value.ndim == 2 else value
    return out


def text_encoder_to_ldm(slot: TextEncoderSlot, config: Mapping[str, Any], state: Mapping[str, Tensor],
                        extras: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """One text encoder under its LDM names, with what the file layout needs beyond the HF model."""
    if slot.style == "hf":  # CLIPTextModel: keys without `text_model.` (transformers 5; older ones had it)
        out = {f"{slot.prefix}text_model.{k.removeprefix('text_model.')}": v
               for k, v in state.items() if not k.endswith("position_ids")}
        out[slot.position_ids_key] = torch.arange(config["max_position_embeddings"], dtype=torch.int64).unsqueeze(0)
        return out
    hf = {("text_model." + k if not k.startswith(("text_model.", "text_projection.")) else k): v
          for k, v in state.items() if not k.endswith("position_ids")}
    out = hf_to_openclip(hf, slot.prefix)
    kept = {k: v for k, v in (extras or {}).items() if k.startswith(slot.prefix) and k not in out}
    out.update(kept)
    out.update({k: v for k, v in _openclip_stand_ins(slot, config, out).items() if k not in out})
    return out


def _openclip_stand_ins(slot: TextEncoderSlot, config: Mapping[str, Any], out: dict[str, Tensor]) -> dict[str, Tensor]:
    """sd-scripts' stand-ins for tensors the HF model does not hold (see the module docstring)."""
    width, layers = config["hidden_size"], config["num_hidden_layers"]
    like = out[f"{slot.prefix}token_embedding.weight"]
    made: dict[str, Tensor] = {}
    last = f"{slot.prefix}transformer.resblocks.{layers - 1}."
    for extra in range(slot.stored_layers_beyond):
        new = f"{slot.prefix}transformer.resblocks.{layers + extra}."
        made.update({new + k[len(last):]: v.clone() for k, v in out.items() if k.startswith(last)})
    made[f"{slot.prefix}text_projection"] = torch.ones(width, width, dtype=like.dtype, device=like.device)
    made[f"{slot.prefix}logit_scale"] = torch.ones((), dtype=like.dtype, device=like.device)
    return made


def modules_to_ldm(architecture: str, modules: Mapping[str, torch.nn.Module],
                   extras: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """A family's modules as one single-file state dict in the original layout."""
    out: dict[str, Tensor] = {}
    for component in ("unet", "vae"):
        module = modules[component]
        out.update(image_component_to_ldm(component, _config(module), module.state_dict()))
    for slot in slots(architecture):
        module = modules[slot.component]
        out.update(text_encoder_to_ldm(slot, _config(module), module.state_dict(), extras))
    return out


def _config(module: torch.nn.Module) -> dict[str, Any]:
    config = module.config
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


# ---- LDM -> diffusers/transformers ----------------------------------------------------------------

def text_encoder_from_ldm(slot: TextEncoderSlot, config: Mapping[str, Any], ldm: Mapping[str, Tensor]
                          ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(HF state for the module, tensors under the slot's prefix that the module does not hold)."""
    if slot.style == "hf":
        start = f"{slot.prefix}text_model."
        state = {k[len(start):]: v for k, v in ldm.items() if k.startswith(start) and not k.endswith("position_ids")}
        return state, {}
    hf = openclip_to_hf(dict(ldm), slot.prefix, config["num_hidden_layers"])
    with_projection = slot.component == "text_encoder_2"  # CLIPTextModelWithProjection keeps `text_model.`
    if not with_projection:
        hf.pop("text_projection.weight", None)
    used = set(hf_to_openclip(hf, slot.prefix)) if hf else set()
    extras = {k: v for k, v in ldm.items() if k.startswith(slot.prefix) and k not in used}
    state = hf if with_projection else {k.removeprefix("text_model."): v for k, v in hf.items()}
    return state, extras


def image_component_from_ldm(component: str, config: Mapping[str, Any], expected: list[str],
                             ldm: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """UNet or VAE state for the diffusers module (keys the file lacks are simply absent)."""
    table = ldm_key_table(component, dict(config), expected)
    out = {}
    for key, name in table.items():
        if name in ldm:
            value = ldm[name]
            out[key] = value.reshape(value.shape[0], value.shape[1]) if is_vae_attention_matrix(name) and value.ndim == 4 \
                else value
    return out


# ---- the expected key set of a shipped architecture ----------------------------------------------

@functools.lru_cache(maxsize=8)
def expected_ldm_shapes(config_family: str) -> dict[str, tuple[int, ...]]:
    """Every key of a shipped architecture's single file with its shape, from meta-built modules.

    This is what our own saver writes, so it is also the key set a loader checks a file against.
    """
    from library.models.modules import build_component

    configs = load_family_configs(config_family)
    modules = {c: build_component(c, configs[c], empty=True)
               for c in family_components(config_family) if c != "scheduler"}
    ldm = modules_to_ldm(architecture_of_config(config_family), modules)
    return {k: tuple(v.shape) for k, v in ldm.items()}
