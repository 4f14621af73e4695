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
from library.models.architecture import resolve_prediction
from library.models.builtin import BUILTIN_MODELS, bundle_state_dict
from library.models.bundle import ModelBundle, ModelFacts, count_parameters, dtype_name
from library.models.configs import ARCHITECTURE_CONFIGS, FAMILIES, SD2_512_FAMILY, load_family_configs
from library.models.folder import (
    is_diffusers_folder,
    is_diffusers_vae_folder,
    load_folder_modules,
    load_vae_folder,
)
from library.models.hashing import file_sha256, legacy_hash, state_dict_sha256
from library.models.modules import cast_module, expected_shapes, freeze
from library.models.single_file import check_v2_flag, load_single_file, load_vae_file


def load_model_bundle(name_or_path: str, *, vae: str | None = None, use_ema_weights: bool = False,
                      dtype: torch.dtype = torch.float32, v2: bool = False,
                      v_parameterization: bool = False) -> ModelBundle:
    """Load a base model (SD1.x, SD2.x or SDXL) by built-in name, diffusers folder or single file.

    `use_ema_weights` picks a checkpoint's EMA UNet weights when it holds both
    sets (the default, like A1111, is the non-EMA set). `dtype` is the dtype of
    the returned modules, whatever the file stores. `v2` and `v_parameterization` are
    sd-scripts' flags: they set the prediction type where the source does not say it
    (`bundle.facts.prediction_source` tells which decided), and `v2` must match an SD2.x model.
    """
    if name_or_path in BUILTIN_MODELS:
        bundle = BUILTIN_MODELS[name_or_path](dtype)
        check_v2_flag(name_or_path, bundle.facts.architecture, v2)
        if v_parameterization and bundle.facts.prediction_type != "v_prediction":
            bundle = with_prediction_type(bundle, "v_prediction", "--v_parameterization")
    else:
        bundle = _load_path(Path(name_or_path).expanduser(), use_ema_weights, dtype, v2, v_parameterization)
    if vae:  # None or "" (an unset config field) keep the model's own VAE
        bundle = replace_vae(bundle, Path(vae).expanduser(), dtype)
    return bundle


def with_prediction_type(bundle: ModelBundle, prediction_type: str, source: str) -> ModelBundle:
    """The same bundle predicting `prediction_type` (facts and scheduler config), saying why."""
    facts = dataclasses.replace(bundle.facts, prediction_type=prediction_type, prediction_source=source,
                                prediction_known=True)
    scheduler = {**bundle.scheduler_config, "prediction_type": prediction_type}
    return dataclasses.replace(bundle, facts=facts, scheduler_config=scheduler)


def _load_path(path: Path, use_ema_weights: bool, dtype: torch.dtype, v2: bool, v_parameterization: bool) -> ModelBundle:
    if not path.exists():
        from library.config_validate import model_not_found

        raise ModelLoadError(f"base model not found: {path}", model_not_found(str(path)))
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise ModelLoadError(f"{path} is a folder but not a diffusers model folder", [
                "a diffusers folder has model_index.json and unet/, vae/, text_encoder/ subfolders",
            ])
        return _load_folder(path, dtype, v2, v_parameterization)
    return load_single_file(path, use_ema_weights=use_ema_weights, dtype=dtype, v2=v2,
                            v_parameterization=v_parameterization)


def _load_folder(folder: Path, dtype: torch.dtype, v2: bool = False, v_parameterization: bool = False) -> ModelBundle:
    modules, scheduler_config, tokenizer, tokenizer_2, detection = load_folder_modules(folder)
    check_v2_flag(folder, detection.architecture, v2)
    stored_dtype = dtype_name(next(modules["unet"].parameters()).dtype)
    for module in modules.values():
        freeze(cast_module(module, dtype))
    said = scheduler_config.get("prediction_type")
    prediction = resolve_prediction(detection.architecture, said,
                                    "scheduler/scheduler_config.json `prediction_type`" if said else None,
                                    v2=v2, v_parameterization=v_parameterization)
    family = match_family(modules, detection.architecture, prediction.prediction_type)
    defaults = load_family_configs(family or ARCHITECTURE_CONFIGS[detection.architecture][0])["scheduler"]
    scheduler_config = {**defaults, **scheduler_config, "prediction_type": prediction.prediction_type}
    bundle = ModelBundle(tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler_config=scheduler_config,
                         facts=None, **modules)  # type: ignore[arg-type]
    bundle.facts = ModelFacts(
        architecture=detection.architecture,
        prediction_type=prediction.prediction_type,
        source=str(folder.resolve()),
        source_format="diffusers",
        name=folder.name,
        model_hash=state_dict_sha256(bundle_state_dict(bundle)),
        legacy_hash=None,
        weights_picked="only one set",
        dtype=dtype_name(dtype),
        parameter_counts=count_parameters(modules),
        config_family=family,
        stored_dtype=stored_dtype,
        detected_by=detection.evidence,
        prediction_source=prediction.source,
        prediction_known=prediction.certain,
    )
    return bundle


def match_family(modules: dict[str, torch.nn.Module], architecture: str = "sd1",
                 prediction_type: str | None = None) -> str | None:
    """Which shipped architecture of this model family these modules have exactly, if any
    (SD2.x 512-base and 768-v have the same shapes: the prediction type picks)."""
    candidates = list(ARCHITECTURE_CONFIGS.get(architecture, FAMILIES))
    if architecture == "sd2" and prediction_type == "epsilon":
        candidates.sort(key=lambda f: f != SD2_512_FAMILY)
    for family in candidates:
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
    counts["total"] = sum(v for k, v in counts.items() if k != "total")
    facts = dataclasses.replace(bundle.facts, vae_source=str(weights_file.resolve()), vae_name=vae_path.name,
                                vae_hash=vae_hash, vae_legacy_hash=vae_legacy, parameter_counts=counts)
    return dataclasses.replace(bundle, vae=vae, facts=facts)


def _check_vae_fits(bundle: ModelBundle, vae: torch.nn.Module, vae_path: Path) -> None:
    latent = vae.config.latent_channels
    if latent != bundle.unet.config.in_channels:
        raise ModelLoadError(f"VAE {vae_path} makes {latent}-channel latents; the UNet expects "
                             f"{bundle.unet.config.in_channels}", [f"use a VAE made for {bundle.facts.family.display} models"])
