"""The metadata written into a LoRA file, in sd-scripts' field names and string formats.

Loaders and tools (A1111's metadata view, sd-webui-additional-networks, civitai)
read `ss_*` fields; model catalogues read `modelspec.*` (Stability's ModelSpec
1.0.1). Every value is a string: numbers and booleans as Python's `str()`
writes them, missing values as "None", nested data as JSON. We add
`lorasmith_config` (the resolved config as JSON) so a file can be reproduced.

The builder takes plain inputs (a dict of the resolved config, a dataset
summary dict, model facts) so the trainer calls it without this module knowing
about datasets or models.
"""
from __future__ import annotations

import datetime
import json
import time
from collections.abc import Mapping
from typing import Any

from library.config import parse_resolution

# (ss field, config field, value when the config lacks the field) — sd-scripts' defaults.
_FROM_CONFIG: tuple[tuple[str, str, Any], ...] = (
    ("ss_output_name", "output_name", None),
    ("ss_learning_rate", "learning_rate", 0.0001),
    ("ss_text_encoder_lr", "text_encoder_lr", None),
    ("ss_unet_lr", "unet_lr", None),
    ("ss_gradient_accumulation_steps", "gradient_accumulation_steps", 1),
    ("ss_lr_warmup_steps", "lr_warmup_steps", 0),
    ("ss_lr_scheduler", "lr_scheduler", "constant"),
    ("ss_network_module", "network_module", "networks.lora"),
    ("ss_network_dim", "network_dim", None),
    ("ss_network_alpha", "network_alpha", None),
    ("ss_network_dropout", "network_dropout", None),
    ("ss_mixed_precision", "mixed_precision", "no"),
    ("ss_clip_skip", "clip_skip", None),
    ("ss_max_token_length", "max_token_length", None),
    ("ss_seed", "seed", None),
    ("ss_lowram", "lowram", False),
    ("ss_noise_offset", "noise_offset", None),
    ("ss_multires_noise_iterations", "multires_noise_iterations", None),
    ("ss_multires_noise_discount", "multires_noise_discount", 0.3),
    ("ss_adaptive_noise_scale", "adaptive_noise_scale", None),
    ("ss_zero_terminal_snr", "zero_terminal_snr", False),
    ("ss_training_comment", "training_comment", None),
    ("ss_max_grad_norm", "max_grad_norm", 1.0),
    ("ss_caption_dropout_rate", "caption_dropout_rate", 0.0),
    ("ss_caption_dropout_every_n_epochs", "caption_dropout_every_n_epochs", 0),
    ("ss_caption_tag_dropout_rate", "caption_tag_dropout_rate", 0.0),
    ("ss_face_crop_aug_range", "face_crop_aug_range", None),
    ("ss_prior_loss_weight", "prior_loss_weight", 1.0),
    ("ss_min_snr_gamma", "min_snr_gamma", None),
    ("ss_scale_weight_norms", "scale_weight_norms", None),
    ("ss_ip_noise_gamma", "ip_noise_gamma", None),
    ("ss_noise_offset_random_strength", "noise_offset_random_strength", False),
    ("ss_ip_noise_gamma_random_strength", "ip_noise_gamma_random_strength", False),
    ("ss_loss_type", "loss_type", "l2"),
    ("ss_huber_schedule", "huber_schedule", "snr"),
    ("ss_huber_scale", "huber_scale", 1.0),
    ("ss_huber_c", "huber_c", 0.1),
    ("ss_validation_seed", "validation_seed", None),
    ("ss_validation_split", "validation_split", 0.0),
    ("ss_max_validation_steps", "max_validation_steps", None),
    ("ss_validate_every_n_epochs", "validate_every_n_epochs", None),
    ("ss_validate_every_n_steps", "validate_every_n_steps", None),
    ("ss_resize_interpolation", "resize_interpolation", None),
    ("ss_batch_size_per_device", "train_batch_size", 1),
    ("ss_keep_tokens", "keep_tokens", 0),
)
# sd-scripts wraps these in bool(), so None becomes "False".
_BOOL_FROM_CONFIG = (
    ("ss_gradient_checkpointing", "gradient_checkpointing"),
    ("ss_full_fp16", "full_fp16"),
    ("ss_v2", "v2"),
    ("ss_v_parameterization", "v_parameterization"),  # read by loaders and model pickers to tell v-prediction LoRAs
    ("ss_cache_latents", "cache_latents"),
    ("ss_debiased_estimation", "debiased_estimation_loss"),
    ("ss_fp8_base", "fp8_base"),
    ("ss_fp8_base_unet", "fp8_base_unet"),
    ("ss_color_aug", "color_aug"),
    ("ss_flip_aug", "flip_aug"),
    ("ss_random_crop", "random_crop"),
    ("ss_shuffle_caption", "shuffle_caption"),
)
# Fields loaders need; `--no_metadata` keeps only these (plus modelspec and hashes).
MINIMUM_KEYS = (
    "ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
)
IMPLEMENTATION_VERSION = "lorasmith/0.1.0"


def parse_network_args(items: list[str] | None) -> dict[str, str]:
    """["conv_dim=4", "conv_alpha=1"] -> {"conv_dim": "4", "conv_alpha": "1"} (values stay strings)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"network_args entry {item!r} is not key=value (example: conv_dim=4)")
        out[key.strip()] = value.strip()
    return out


def base_model_version(v2: bool, v_parameterization: bool) -> str:
    """sd-scripts' ss_base_model_version: sd_v1, sd_v2, sd_v2_v."""
    return "sd" + ("_v2" if v2 else "_v1") + ("_v" if v_parameterization else "")


def optimizer_description(optimizer_class: type | str, kwargs: Mapping[str, Any] | None = None) -> str:
    """ss_optimizer: `module.Class` plus `(k=v,...)` when arguments were given."""
    if isinstance(optimizer_class, str):
        name = optimizer_class
    else:
        name = f"{optimizer_class.__module__}.{optimizer_class.__name__}"
    args = ",".join(f"{k}={v}" for k, v in (kwargs or {}).items())
    return name + (f"({args})" if args else "")


def _s(value: Any) -> str:
    return str(value)


SGM_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"  # sd-scripts' IMPL_STABILITY_AI


def modelspec_metadata(
    *,
    title: str | None,
    resolution: Any,
    v2: bool = False,
    v_parameterization: bool = False,
    timestamp: float | None = None,
    clip_skip: int | None = None,
    min_timestep: int | None = None,
    max_timestep: int | None = None,
    extra: Mapping[str, str] | None = None,
    family: str | None = None,
) -> dict[str, str]:
    """`modelspec.*` fields as sd-scripts writes them for a LoRA (library/sai_model_spec.py).

    `family` (sd1, sd2, sdxl) names the base model's family; without it `v2` picks SD2 or SD1.
    An SDXL LoRA's implementation is Stability AI's generative-models repository (sd-scripts'
    IMPL_STABILITY_AI), SD1/SD2 LoRAs' is "diffusers".
    """
    timestamp = time.time() if timestamp is None else timestamp
    from library.models.family import FAMILIES

    fam = FAMILIES[family] if family in FAMILIES else FAMILIES["sd2" if v2 else "sd1"]
    arch = fam.modelspec_architecture("v_prediction" if v_parameterization else "epsilon", adapter="")
    width, height = parse_resolution(resolution)
    out = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{arch}/lora",
        "modelspec.implementation": SGM_IMPLEMENTATION if fam.name == "sdxl" else "diffusers",
        "modelspec.title": title if title else f"LoRA@{timestamp}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.prediction_type": "v" if v_parameterization else "epsilon",
        "modelspec.implementation_version": IMPLEMENTATION_VERSION,
    }
    if min_timestep is not None or max_timestep is not None:
        out["modelspec.timestep_range"] = f"{min_timestep or 0},{1000 if max_timestep is None else max_timestep}"
    if clip_skip is not None:
        out["modelspec.encoder_layer"] = str(clip_skip)
    for key, value in (extra or {}).items():
        if value is not None:
            out[key if key.startswith("modelspec.") else f"modelspec.{key}"] = str(value)
    return out


def file_hashes(path: str | None) -> tuple[str, str]:
    """(old A1111 8-hex hash, full SHA-256) of a model file, with sd-scripts' NOFILE/IsADirectory."""
    import hashlib
    import os

    if path is None or not os.path.exists(path):
        return "NOFILE", "NOFILE"
    if os.path.isdir(path):
        return "IsADirectory", "IsADirectory"
    full = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        legacy = hashlib.sha256(fh.read(0x10000)).hexdigest()[:8]
        fh.seek(0)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            full.update(chunk)
    return legacy, full.hexdigest()


def model_metadata(
    pretrained_model_name_or_path: str | None, vae: str | None = None, *, v2: bool = False,
    v_parameterization: bool = False, new_sd_model_hash: str | None = None,
) -> dict[str, str]:
    """ss_sd_model_* / ss_vae_* / ss_base_model_version as sd-scripts records them.

    Pass `new_sd_model_hash` when the model loader already computed the file's SHA-256.
    """
    import os

    out = {"ss_base_model_version": base_model_version(v2, v_parameterization)}
    for prefix, value in (("sd_model", pretrained_model_name_or_path), ("vae", vae)):
        if value is None:
            continue
        name = str(value)
        if os.path.exists(name):
            legacy, full = file_hashes(name)
            if prefix == "sd_model" and new_sd_model_hash and full not in ("IsADirectory",):
                full = new_sd_model_hash
            out[f"ss_{prefix}_hash"], out[f"ss_new_{prefix}_hash"] = legacy, full
            name = os.path.basename(os.path.normpath(name))
        out[f"ss_{prefix}_name"] = name
    return out


def _family_or_none(facts: Any) -> Any:
    """The facts' ModelFamily, or None for objects that do not name one (older callers, mocks)."""
    from library.models.family import family_of

    try:
        return family_of(facts)
    except (ValueError, TypeError):
        return None


def model_metadata_from_facts(facts: Any, *, v2: bool = False, v_parameterization: bool | None = None) -> dict[str, str]:
    """ss_sd_model_* / ss_vae_* from a loaded bundle's ModelFacts (no second hashing pass).

    The old 8-hex hash is only defined for single files; elsewhere it is "None".
    """
    if v_parameterization is None:
        v_parameterization = getattr(facts, "prediction_type", "epsilon") == "v_prediction"
    family = _family_or_none(facts)
    if family is not None and family.name != "sd1":
        version = family.base_model_version("v_prediction" if v_parameterization else "epsilon")
    else:
        version = base_model_version(v2, v_parameterization)
    out = {
        "ss_base_model_version": version,
        "ss_sd_model_name": str(facts.name),
        "ss_sd_model_hash": str(facts.legacy_hash),
        "ss_new_sd_model_hash": str(facts.model_hash),
    }
    if getattr(facts, "vae_name", None):
        out.update({
            "ss_vae_name": str(facts.vae_name),
            "ss_vae_hash": str(facts.vae_legacy_hash),
            "ss_new_vae_hash": str(facts.vae_hash),
        })
    return out


def build_metadata(
    config: Mapping[str, Any],
    *,
    dataset: Mapping[str, Any],
    model: Mapping[str, str],
    optimizer: str,
    session_id: int,
    training_started_at: float,
    epoch: int,
    steps: int,
    num_epochs: int,
    max_train_steps: int,
    num_batches_per_epoch: int,
    training_finished_at: float | None = None,
    num_processes: int = 1,
    timestamp: float | None = None,
    family: str | None = None,
) -> dict[str, str]:
    """Every field sd-scripts' train_network.py writes, plus modelspec and lorasmith_config.

    family: the base model's family (sd1, sd2, sdxl) for modelspec; None = from config["v2"].

    config: the resolved TrainConfig as a dict (sd-scripts field names).
    dataset: what `dataset_fields` formats (`library.data.plan.dataset_summary`): num_train_images,
      num_reg_images, num_validation_images, dataset_dirs ({folder: {"n_repeats", "img_count"}}),
      reg_dataset_dirs, tag_frequency ({folder: {tag: count}}), bucket_info; resolution,
      enable_bucket, bucket_no_upscale, min/max_bucket_reso fall back to the config's.
    model: the output of `model_metadata_from_facts(bundle.facts)` or `model_metadata(path)`.
    With config["no_metadata"] true only MINIMUM_KEYS and modelspec are kept.
    """
    cfg = dict(config)
    md: dict[str, Any] = {key: cfg.get(field, default) for key, field, default in _FROM_CONFIG}
    md.update({key: bool(cfg.get(field)) for key, field in _BOOL_FROM_CONFIG})
    batch = cfg.get("train_batch_size", 1) or 1
    md.update({
        "ss_session_id": session_id,
        "ss_training_started_at": training_started_at,
        "ss_training_finished_at": time.time() if training_finished_at is None else training_finished_at,
        "ss_steps": steps,
        "ss_epoch": epoch,
        "ss_num_epochs": num_epochs,
        "ss_max_train_steps": max_train_steps,
        "ss_num_batches_per_epoch": num_batches_per_epoch,
        "ss_total_batch_size": batch * num_processes * (cfg.get("gradient_accumulation_steps") or 1),
        "ss_sd_scripts_commit_hash": IMPLEMENTATION_VERSION,
        "ss_optimizer": optimizer,
    })
    md.update(dataset_fields(_dataset_with_config_fallbacks(cfg, dataset)))
    net_args = parse_network_args(cfg.get("network_args"))
    if net_args:
        net_args.setdefault("dropout", cfg.get("network_dropout"))
        md["ss_network_args"] = json.dumps(net_args)
    md.update(model)
    out = {k: _s(v) for k, v in md.items()}
    if cfg.get("no_metadata"):
        out = {k: out[k] for k in MINIMUM_KEYS if k in out}
    else:
        out["lorasmith_config"] = json.dumps(cfg, default=str, sort_keys=True)
    out.update(modelspec_metadata(
        title=cfg.get("metadata_title") or cfg.get("output_name"),
        resolution=cfg.get("resolution", 512),
        v2=bool(cfg.get("v2")),
        v_parameterization=bool(cfg.get("v_parameterization")),
        timestamp=timestamp,
        clip_skip=cfg.get("clip_skip"),
        min_timestep=cfg.get("min_timestep"),
        max_timestep=cfg.get("max_timestep"),
        extra={k: cfg.get(f"metadata_{k}") for k in ("author", "description", "license", "tags")},
        family=family,
    ))
    return out


def dataset_fields(dataset: Mapping[str, Any]) -> dict[str, str]:
    """The dataset-side `ss_*` strings exactly as sd-scripts' train_network.py writes them.

    The one formatter of these fields: `library.data.dataset_metadata` (checked against
    an sd-scripts run) and `build_metadata` (every saved LoRA) both call it, so a trained
    file carries the fixture-tested strings. `dataset` holds plain values, as
    `library.data.plan.dataset_summary` returns them. Like sd-scripts' dataset, bucket
    limits read "None" and no-upscale "False" when bucketing is off.
    """
    bucketed = bool(dataset.get("enable_bucket"))
    resolution = dataset.get("resolution")
    out: dict[str, Any] = {
        "ss_num_train_images": dataset.get("num_train_images", 0),
        "ss_num_validation_images": dataset.get("num_validation_images", 0),
        "ss_num_reg_images": dataset.get("num_reg_images", 0),
        "ss_resolution": None if resolution is None else tuple(resolution),
        "ss_enable_bucket": bucketed,
        "ss_min_bucket_reso": dataset.get("min_bucket_reso") if bucketed else None,
        "ss_max_bucket_reso": dataset.get("max_bucket_reso") if bucketed else None,
        "ss_bucket_no_upscale": bucketed and bool(dataset.get("bucket_no_upscale")),
        "ss_dataset_dirs": json.dumps(dataset.get("dataset_dirs", {})),
        "ss_reg_dataset_dirs": json.dumps(dataset.get("reg_dataset_dirs", {})),
        "ss_tag_frequency": json.dumps(dataset.get("tag_frequency", {})),
        "ss_bucket_info": json.dumps(dataset.get("bucket_info")),
    }
    if "num_batches_per_epoch" in dataset:
        out["ss_num_batches_per_epoch"] = dataset["num_batches_per_epoch"]
    return {k: _s(v) for k, v in out.items()}


def _dataset_with_config_fallbacks(cfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset summary, with the config's bucket and resolution options where it lacks them."""
    merged: dict[str, Any] = {name: cfg.get(name) for name in
                              ("enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso")}
    merged["resolution"] = parse_resolution(cfg.get("resolution", 512))
    merged.update(dataset)
    return merged
