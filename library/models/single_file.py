"""Loading single-file checkpoints in the original LDM layout (A1111/Civitai style).

The file's tensors are renamed to diffusers names (`ldm_convert`), checked
against the shipped config of the matching architecture, and assigned into
modules built on the meta device, so no random initialisation is paid for.
"""
from __future__ import annotations

from pathlib import Path

import torch

from library.errors import ModelLoadError
from library.models.architecture import check_ldm_keys
from library.models.bundle import ModelBundle, ModelFacts, WeightsPicked, count_parameters, dtype_name
from library.models.checkpoint_io import read_state_dict
from library.models.configs import FAMILIES, load_family_configs
from library.models.hashing import file_sha256, legacy_hash
from library.models.ldm_convert import (
    COMPONENTS,
    detect_family,
    ldm_to_component,
    normalise_old_clip_keys,
    unexpected_ldm_keys,
)
from library.models.ldm_keys import UNET_PREFIX, VAE_PREFIX
from library.models.modules import assign_weights, build_component, cast_module, expected_shapes, freeze
from library.models.tokenizer import load_tokenizer

EMA_PREFIX = "model_ema."
_CROSS_ATTN_KEY = f"{UNET_PREFIX}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


def ema_key(unet_key: str) -> str:
    """LDM's EMA copy of a UNet weight: `model_ema.` + the name under `model.` with dots removed."""
    return EMA_PREFIX + unet_key.removeprefix("model.").replace(".", "")


def pick_unet_weights(path: Path, ldm: dict[str, torch.Tensor], use_ema: bool
                      ) -> tuple[dict[str, torch.Tensor], WeightsPicked, tuple[str, ...]]:
    """Swap the EMA UNet in when asked and present; report which set was used.

    A1111 uses the non-EMA weights of a file holding both, so that is the default.
    """
    unet_keys = [k for k in ldm if k.startswith(UNET_PREFIX)]
    has_ema = any(k.startswith(EMA_PREFIX + "diffusion_model") for k in ldm)
    if not has_ema:
        notes = ("use_ema_weights was set but the file has no separate EMA weights",) if use_ema else ()
        return ldm, "only one set", notes
    if not use_ema:
        return ldm, "non-ema", ()
    missing = [ema_key(k) for k in unet_keys if ema_key(k) not in ldm]
    if missing:
        raise ModelLoadError(f"{path}: the EMA weights are incomplete ({len(missing)} UNet tensors lack an EMA copy)",
                             [f"e.g. missing {missing[0]}", "load without use_ema_weights to use the regular weights"])
    picked = dict(ldm)
    picked.update({k: ldm[ema_key(k)] for k in unet_keys})
    return picked, "ema", ()


def cross_attention_width(ldm: dict[str, torch.Tensor]) -> int | None:
    tensor = ldm.get(_CROSS_ATTN_KEY)
    return int(tensor.shape[1]) if tensor is not None else None


def load_single_file(path: Path, *, use_ema_weights: bool = False, dtype: torch.dtype = torch.float32) -> ModelBundle:
    """A full SD1.x checkpoint (`.safetensors`, or `.ckpt` read without running code) as a bundle."""
    ldm = normalise_old_clip_keys(read_state_dict(path))
    check_ldm_keys(path, ldm.keys(), cross_attention_width(ldm))
    ldm, picked, notes = pick_unet_weights(path, ldm, use_ema_weights)
    family = detect_family(path, ldm)
    file_dtypes = sorted({dtype_name(t.dtype) for k, t in ldm.items() if k.startswith(UNET_PREFIX)})
    modules = {}
    for component in COMPONENTS:
        weights = ldm_to_component(path, family, component, ldm)
        modules[component] = _assemble(family, component, weights, dtype)
    extra = unexpected_ldm_keys(ldm, family)
    if extra:
        notes += (f"ignored {len(extra)} unused tensors under the model prefixes, e.g. {extra[0]}",)
    configs = load_family_configs(family)
    facts = ModelFacts(
        architecture="sd1", prediction_type=configs["scheduler"].get("prediction_type", "epsilon"),
        source=str(path.resolve()), source_format="single_file", name=path.name,
        model_hash=file_sha256(path), legacy_hash=legacy_hash(path), weights_picked=picked,
        dtype=dtype_name(dtype), parameter_counts=count_parameters(modules), config_family=family,
        stored_dtype=", ".join(file_dtypes), notes=notes,
    )
    return ModelBundle(tokenizer=load_tokenizer(), scheduler_config=configs["scheduler"], facts=facts, **modules)


def _assemble(family: str, component: str, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.nn.Module:
    module = build_component(component, load_family_configs(family)[component], empty=True)
    assign_weights(module, weights)
    return freeze(cast_module(module, dtype))


def load_vae_file(path: Path, family: str | None) -> torch.nn.Module:
    """A VAE file: LDM layout with or without `first_stage_model.`, or diffusers layout."""
    sd = read_state_dict(path)
    if any(k.startswith("encoder.down_blocks.") for k in sd):
        return _diffusers_layout_vae(path, sd, family)
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX) for k in sd) else ""
    candidates = [family] if family else []
    candidates += [f for f in FAMILIES if f not in candidates]
    conv_in = sd.get(f"{prefix}encoder.conv_in.weight")
    if conv_in is None:
        raise ModelLoadError(f"{path} is not a VAE (no encoder.conv_in.weight)", [
            "give a VAE file such as vae-ft-mse-840000-ema-pruned.safetensors, or a diffusers VAE folder",
        ])
    for candidate in candidates:
        if expected_shapes(candidate, "vae")["encoder.conv_in.weight"] == tuple(conv_in.shape):
            weights = ldm_to_component(path, candidate, "vae", sd, prefix_override=prefix)
            return _assemble(candidate, "vae", weights, torch.float32)
    raise ModelLoadError(f"{path}: VAE input conv has shape {list(conv_in.shape)}, unlike any SD1.x VAE",
                         ["use a VAE made for SD1.x models"])


def _diffusers_layout_vae(path: Path, sd: dict[str, torch.Tensor], family: str | None) -> torch.nn.Module:
    for candidate in ([family] if family else []) + list(FAMILIES):
        shapes = expected_shapes(candidate, "vae")
        if {k: tuple(v.shape) for k, v in sd.items()} == shapes:
            return _assemble(candidate, "vae", sd, torch.float32)
    raise ModelLoadError(f"{path}: diffusers-layout VAE weights that match no shipped VAE config", [
        "put the file in a folder with its config.json and pass the folder instead",
    ])
