"""Loading single-file checkpoints in the original LDM layout (A1111/Civitai style).

The file's tensors are renamed to diffusers names (`ldm_convert`), checked
against the shipped config of the matching architecture, and assigned into
modules built on the meta device, so no random initialisation is paid for.
"""
from __future__ import annotations

from pathlib import Path

import torch

from library.errors import ModelLoadError
from library.models.architecture import (
    V_PRED_KEY,
    ZTSNR_KEY,
    detect_ldm,
    resolve_prediction,
)
from library.models.bundle import (
    ModelBundle,
    ModelFacts,
    WeightsPicked,
    count_parameters,
    dtype_name,
)
from library.models.checkpoint_io import read_state_dict
from library.models.configs import (
    ARCHITECTURE_CONFIGS,
    FAMILIES,
    SD2_512_FAMILY,
    load_family_configs,
)
from library.models.family import family_of
from library.models.hashing import file_sha256, legacy_hash
from library.models.ldm_convert import ldm_to_component, normalise_old_clip_keys
from library.models.ldm_keys import UNET_PREFIX, VAE_PREFIX, is_vae_attention_matrix
from library.models.ldm_layout import (
    all_prefixes,
    expected_ldm_shapes,
    image_component_from_ldm,
    slots,
    text_encoder_from_ldm,
)
from library.models.modules import (
    assign_weights,
    build_component,
    cast_module,
    expected_shapes,
    freeze,
)
from library.models.tokenizer import family_tokenizers

EMA_PREFIX = "model_ema."
MARKER_KEYS = (V_PRED_KEY, ZTSNR_KEY)  # kept and written back: they tell ComfyUI the prediction type
_SHOWN = 5


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


def load_single_file(path: Path, *, use_ema_weights: bool = False, dtype: torch.dtype = torch.float32,
                     v2: bool = False, v_parameterization: bool = False) -> ModelBundle:
    """A full SD1.x, SD2.x or SDXL checkpoint (`.safetensors`, or `.ckpt` read without running code) as a bundle.

    The family comes from the keys and shapes (architecture.detect_ldm); `v2` and
    `v_parameterization` are sd-scripts' flags, used for the prediction type when the file does
    not say it, and `v2` is checked against what the file is.
    """
    ldm = normalise_old_clip_keys(read_state_dict(path))
    shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    detection = detect_ldm(path, shapes)
    check_v2_flag(path, detection.architecture, v2)
    ldm, picked, notes = pick_unet_weights(path, ldm, use_ema_weights)
    prediction = resolve_prediction(detection.architecture, detection.file_prediction_type,
                                    detection.prediction_evidence, v2=v2, v_parameterization=v_parameterization)
    shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    family = match_config_family(path, detection.architecture, shapes, prediction.prediction_type)
    configs = load_family_configs(family)
    modules, extras = {}, {k: ldm[k] for k in MARKER_KEYS if k in ldm}
    for component in ("unet", "vae"):
        state = image_component_from_ldm(component, configs[component], list(expected_shapes(family, component)), ldm)
        modules[component] = _assemble(family, component, state, dtype)
    for slot in slots(detection.architecture):
        state, kept = text_encoder_from_ldm(slot, configs[slot.component], ldm)
        modules[slot.component] = _assemble(family, slot.component, state, dtype)
        extras.update(kept)
    file_dtypes = sorted({dtype_name(t.dtype) for k, t in ldm.items() if k.startswith(UNET_PREFIX)})
    extra = unused_model_keys(detection.architecture, family, ldm, extras)
    if extra:
        notes += (f"ignored {len(extra)} unused tensors under the model prefixes, e.g. {extra[0]}",)
    facts = ModelFacts(
        architecture=detection.architecture, prediction_type=prediction.prediction_type,
        source=str(path.resolve()), source_format="single_file", name=path.name,
        model_hash=file_sha256(path), legacy_hash=legacy_hash(path), weights_picked=picked,
        dtype=dtype_name(dtype), parameter_counts=count_parameters(modules), config_family=family,
        stored_dtype=", ".join(file_dtypes), notes=notes + detection.notes,
        detected_by=detection.evidence, prediction_source=prediction.source, prediction_known=prediction.certain,
    )
    tokenizer, tokenizer_2 = family_tokenizers(detection.architecture)
    scheduler = {**configs["scheduler"], "prediction_type": prediction.prediction_type}
    return ModelBundle(tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler_config=scheduler, facts=facts,
                       ldm_extras=extras, **modules)


def check_v2_flag(source: Path | str, architecture: str, v2: bool) -> None:
    """sd-scripts needs --v2 to load SD2.x; we detect it, but a --v2 on another family is a mistake worth naming."""
    if v2 and architecture != "sd2":
        raise ModelLoadError(f"--v2 was given but {source} is a {family_of(architecture).display} model", [
            "drop --v2 (lorasmith detects SD2.x from the weights)"])


def match_config_family(path: Path, architecture: str, shapes: dict[str, tuple[int, ...]], prediction_type: str) -> str:
    """The shipped config whose every key and shape the file has (SD2: the one of its prediction type)."""
    candidates = list(ARCHITECTURE_CONFIGS[architecture])
    if architecture == "sd2" and prediction_type == "epsilon":
        candidates.sort(key=lambda f: f != SD2_512_FAMILY)
    best: tuple[int, list[str]] | None = None
    for candidate in candidates:
        problems = layout_problems(architecture, candidate, shapes)
        if not problems:
            return candidate
        if best is None or len(problems) < best[0]:
            best = (len(problems), problems)
    assert best is not None
    display = family_of(architecture).display
    raise ModelLoadError(
        f"{path}: the weights do not match the {display} layout ({best[0]} problems)",
        best[1][:_SHOWN] + ([f"... and {best[0] - _SHOWN} more"] if best[0] > _SHOWN else [])
        + ["the file may be damaged, or a modified architecture; re-download it or use a diffusers folder"],
    )


def layout_problems(architecture: str, family: str, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Missing keys and wrong shapes against a shipped config (what the saver would write for it)."""
    problems = []
    optional = optional_ldm_keys(architecture, family)
    for key, shape in expected_ldm_shapes(family).items():
        if key not in shapes:
            if key not in optional:
                problems.append(f"missing {key} ({_component_of(architecture, key)})")
        elif shapes[key] != shape and not (is_vae_attention_matrix(key) and shapes[key] == shape[:2]):
            problems.append(f"{key}: shape {list(shapes[key])}, expected {list(shape)} ({_component_of(architecture, key)})")
    return problems


def _component_of(architecture: str, key: str) -> str:
    if key.startswith(UNET_PREFIX):
        return "unet"
    if key.startswith(VAE_PREFIX):
        return "vae"
    return next((s.component for s in slots(architecture) if key.startswith(s.prefix)), "other")


def optional_ldm_keys(architecture: str, family: str) -> set[str]:
    """Keys our saver writes that a file may lack: CLIP's position ids, OpenCLIP parts no module holds."""
    expected = expected_ldm_shapes(family)
    configs = load_family_configs(family)
    optional = set()
    for slot in slots(architecture):
        if slot.style == "hf":
            optional.add(slot.position_ids_key)
            continue
        layers = configs[slot.component]["num_hidden_layers"]
        for key in expected:
            rest = key[len(slot.prefix):] if key.startswith(slot.prefix) else None
            if rest is None:
                continue
            if rest in ("logit_scale",) or (rest == "text_projection" and slot.component == "text_encoder") or rest.startswith("transformer.resblocks.") and int(rest.split(".")[2]) >= layers:
                optional.add(key)
    return optional


def unused_model_keys(architecture: str, family: str, ldm: dict[str, torch.Tensor],
                      extras: dict[str, torch.Tensor]) -> list[str]:
    """Keys under the family's model prefixes that neither a module nor the kept extras use."""
    used = set(expected_ldm_shapes(family)) | set(extras)
    return sorted(k for k in ldm if k.startswith(all_prefixes(architecture)) and k not in used)


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
