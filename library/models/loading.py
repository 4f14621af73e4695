"""`load_model_bundle`: one entry for every kind of base model.

A name resolves, in order, to a built-in model (`tiny`), a diffusers folder, or
a single checkpoint file in the original LDM layout. A separate VAE can replace
the model's own. Everything happens offline.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from library.errors import ModelLoadError
from library.models.builtin import BUILTIN_MODELS, bundle_state_dict
from library.models.bundle import ModelBundle, ModelFacts, count_parameters, dtype_name
from library.models.folder import is_diffusers_folder, is_diffusers_vae_folder, load_folder_modules, load_vae_folder
from library.models.hashing import file_sha256, legacy_hash, state_dict_sha256
from library.models.configs import FAMILIES
from library.models.modules import cast_module, expected_shapes, freeze
from library.models.single_file import load_single_file, load_vae_file


def load_model_bundle(name_or_path: str, *, vae: str | None = None, use_ema_weights: bool = False,
                      dtype: torch.dtype = torch.float32) -> ModelBundle:
    """Load a base model by built-in name, diffusers folder or single file.

    `use_ema_weights` picks a checkpoint's EMA UNet weights when it holds both
    sets (the default, like A1111, is the non-EMA set). `dtype` is the dtype of
    the returned modules, whatever the file stores.
    """
    if name_or_path in BUILTIN_MODELS:
        bundle = BUILTIN_MODELS[name_or_path](dtype)
    else:
        bundle = _load_path(Path(name_or_path).expanduser(), use_ema_weights, dtype)
    if vae:  # None or "" (an unset config field) keep the model's own VAE
        bundle = replace_vae(bundle, Path(vae).expanduser(), dtype)
    return bundle


def _load_path(path: Path, use_ema_weights: bool, dtype: torch.dtype) -> ModelBundle:
    if not path.exists():
        from library.config_validate import model_not_found

        raise ModelLoadError(f"base model not found: {path}", model_not_found(str(path)))
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise ModelLoadError(f"{path} is a folder but not a diffusers model folder", [
                "a diffusers folder has model_index.json and unet/, vae/, text_encoder/ subfolders",
            ])
        return _load_folder(path, dtype)
    return load_single_file(path, use_ema_weights=use_ema_weights, dtype=dtype)


def _load_folder(folder: Path, dtype: torch.dtype) -> ModelBundle:
    modules, scheduler_config, tokenizer = load_folder_modules(folder)
    stored_dtype = dtype_name(next(modules["unet"].parameters()).dtype)
    for module in modules.values():
        freeze(cast_module(module, dtype))
    bundle = ModelBundle(tokenizer=tokenizer, scheduler_config=scheduler_config, facts=None,  # type: ignore[arg-type]
                         **modules)
    bundle.facts = ModelFacts(
        architecture="sd1",
        prediction_type=scheduler_config.get("prediction_type", "epsilon"),
        source=str(folder.resolve()),
        source_format="diffusers",
        name=folder.name,
        model_hash=state_dict_sha256(bundle_state_dict(bundle)),
        legacy_hash=None,
        weights_picked="only one set",
        dtype=dtype_name(dtype),
        parameter_counts=count_parameters(modules),
        config_family=match_family(modules),
        stored_dtype=stored_dtype,
    )
    return bundle


def match_family(modules: dict[str, torch.nn.Module]) -> str | None:
    """Which shipped architecture these modules have exactly, if any."""
    for family in FAMILIES:
        if all({k: tuple(v.shape) for k, v in m.state_dict().items()} == expected_shapes(family, c)
               for c, m in modules.items()):
            return family
    return None


def replace_vae(bundle: ModelBundle, vae_path: Path, dtype: torch.dtype) -> ModelBundle:
    """Swap in a separately distributed VAE (file in LDM layout, or diffusers folder)."""
    if not vae_path.exists():
        raise ModelLoadError(f"VAE not found: {vae_path}", ["give a VAE .safetensors/.ckpt file or a diffusers VAE folder"])
    if vae_path.is_dir():
        if not is_diffusers_vae_folder(vae_path):
            raise ModelLoadError(f"{vae_path} is a folder without a VAE config.json", [
                "give a diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors) or a VAE file",
            ])
        vae, weights_file = load_vae_folder(vae_path)
        vae_hash, vae_legacy = state_dict_sha256(vae.state_dict()), None
    else:
        vae = load_vae_file(vae_path, bundle.facts.config_family)
        weights_file = vae_path
        vae_hash, vae_legacy = file_sha256(vae_path), legacy_hash(vae_path)
    _check_vae_fits(bundle, vae, vae_path)
    freeze(cast_module(vae, dtype))
    counts = dict(bundle.facts.parameter_counts)
    counts["vae"] = sum(p.numel() for p in vae.parameters())
    counts["total"] = counts["unet"] + counts["vae"] + counts["text_encoder"]
    facts = dataclasses.replace(bundle.facts, vae_source=str(weights_file.resolve()), vae_name=vae_path.name,
                                vae_hash=vae_hash, vae_legacy_hash=vae_legacy, parameter_counts=counts)
    return dataclasses.replace(bundle, vae=vae, facts=facts)


def _check_vae_fits(bundle: ModelBundle, vae: torch.nn.Module, vae_path: Path) -> None:
    latent = vae.config.latent_channels
    if latent != bundle.unet.config.in_channels:
        raise ModelLoadError(f"VAE {vae_path} makes {latent}-channel latents; the UNet expects "
                             f"{bundle.unet.config.in_channels}", ["use a VAE made for SD1.x models"])
