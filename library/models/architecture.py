"""Which model family a checkpoint is, from its key names and shapes (never from its file name).

Single files (the original LDM / SGM layout):
- SDXL base: `conditioner.embedders.0.transformer.*` (CLIP ViT-L) and
  `conditioner.embedders.1.model.*` (OpenCLIP ViT-bigG), `model.diffusion_model.label_emb.*`.
- SD2.x: `cond_stage_model.model.*` (OpenCLIP ViT-H), 1024-wide cross-attention.
- SD1.x: `cond_stage_model.transformer.*` (CLIP ViT-L), 768-wide cross-attention.
Refused by name: the SDXL refiner (OpenCLIP bigG as its only embedder,
`conditioner.embedders.0.model.*`), SD3/3.5 (`joint_blocks`), FLUX (`double_blocks`),
Stable Cascade (`clip_txt_mapper`, `channelwise`), UNets with other than 4 input channels
(inpainting 9, instruct-pix2pix 8, depth 5, x4 upscaler 7), and anything else. The key names
are the ones diffusers' `infer_diffusers_model_type` and ComfyUI's model detection test.

Prediction type: only a few files say it. ComfyUI and the v-prediction SDXL fine-tunes
(NoobAI-XL v-pred, …) mark it with an empty `v_pred` tensor (and `ztsnr` for zero terminal
SNR); a diffusers folder's `scheduler_config.json` has `prediction_type`. Otherwise it is
the flags, as in sd-scripts (`--v_parameterization`; `--v2` alone means SD2 512-base, ε), or
the family's default, and we say that it was assumed and which flag changes it.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library.errors import ModelLoadError
from library.models.family import family_of

SUPPORTED = ("lorasmith loads Stable Diffusion 1.x, 2.x (512-base and 768-v) and SDXL base models "
             "(and their fine-tunes: Pony, Illustrious, NoobAI, ...)")
UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
CROSS_ATTN = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
SDXL_CROSS_ATTN = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"
_CHANNEL_VARIANTS = {9: "an inpainting model (9-channel UNet input)", 8: "an instruct-pix2pix model (8-channel UNet input)",
                     5: "a depth-to-image model (5-channel UNet input)", 7: "an x4 upscaler (7-channel UNet input)"}


@dataclass(frozen=True)
class Detection:
    """What a checkpoint is and how we know."""

    architecture: str  # "sd1" | "sd2" | "sdxl" (library/models/family.py)
    evidence: tuple[str, ...]
    file_prediction_type: str | None = None  # only when the file itself says
    prediction_evidence: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def refuse(source: Path | str, what: str, evidence: str, hint: str | None = None) -> ModelLoadError:
    """The one refusal message: what it is, how we know, what lorasmith supports."""
    return ModelLoadError(f"{source} is {what}, which lorasmith cannot train LoRAs for", [
        f"recognised by: {evidence}", hint or SUPPORTED,
    ])


def _has(shapes: Mapping[str, Any], *parts: str) -> str | None:
    """The first key containing every part, or None."""
    for key in shapes:
        if all(p in key for p in parts):
            return key
    return None


def _refuse_other_models(source: Path | str, shapes: Mapping[str, tuple[int, ...]]) -> None:
    if key := _has(shapes, "double_blocks.", "img_attn"):
        raise refuse(source, "a FLUX model", f"its `{key}` (FLUX double-stream blocks)")
    if key := _has(shapes, "joint_blocks.", "context_block"):
        raise refuse(source, "a Stable Diffusion 3 / 3.5 model", f"its `{key}` (MMDiT joint blocks)")
    if key := (_has(shapes, "clip_txt_mapper") or _has(shapes, ".channelwise.")):
        raise refuse(source, "a Stable Cascade (Würstchen) stage", f"its `{key}`")
    key = _has(shapes, "conditioner.embedders.0.model.")
    if key and not _has(shapes, "conditioner.embedders.1."):
        raise refuse(source, "the SDXL refiner", f"its only text encoder is OpenCLIP ViT-bigG (`{key}`)",
                     SUPPORTED + "; train on the SDXL base model: the refiner only polishes its outputs")


def detect_ldm(source: Path | str, shapes: Mapping[str, tuple[int, ...]]) -> Detection:
    """The family of a single-file checkpoint from its keys and shapes, or a ModelLoadError naming what it is."""
    _refuse_other_models(source, shapes)
    if UNET_CONV_IN not in shapes:
        raise ModelLoadError(f"{source} has no Stable Diffusion UNet (no {UNET_CONV_IN})", [
            "is this a LoRA, embedding or VAE rather than a base model? give a full checkpoint", SUPPORTED,
        ])
    in_channels = shapes[UNET_CONV_IN][1] if len(shapes[UNET_CONV_IN]) > 1 else None
    if in_channels != 4:
        what = _CHANNEL_VARIANTS.get(in_channels, f"a model whose UNet takes {in_channels} input channels")
        raise refuse(source, what, f"`{UNET_CONV_IN}` has shape {list(shapes[UNET_CONV_IN])} (text-to-image UNets take 4)")
    evidence: list[str] = []
    if _has(shapes, "conditioner.embedders.1.model.") and _has(shapes, "conditioner.embedders.0.transformer."):
        evidence.append("two text encoders: `conditioner.embedders.0.transformer.*` (CLIP ViT-L) and "
                        "`conditioner.embedders.1.model.*` (OpenCLIP ViT-bigG)")
        if "model.diffusion_model.label_emb.0.0.weight" in shapes:
            evidence.append("`label_emb` (size/crop conditioning) in the UNet")
        architecture = "sdxl"
    elif _has(shapes, "cond_stage_model.model."):
        evidence.append("OpenCLIP ViT-H text encoder keys `cond_stage_model.model.*`")
        architecture = "sd2"
    elif _has(shapes, "cond_stage_model.transformer."):
        evidence.append("CLIP ViT-L text encoder keys `cond_stage_model.transformer.*`")
        architecture = "sd1"
    elif CROSS_ATTN in shapes and shapes[CROSS_ATTN][-1] in (768, 1024):
        architecture = "sd1" if shapes[CROSS_ATTN][-1] == 768 else "sd2"
        evidence.append("no text encoder in the file")
    else:
        raise refuse(source, "an unknown model", "none of the text-encoder layouts of SD1.x, SD2.x or SDXL")
    _check_cross_attention(source, architecture, shapes, evidence)
    return _with_prediction(Detection(architecture, tuple(evidence)), shapes)


def _check_cross_attention(source: Path | str, architecture: str, shapes: Mapping[str, tuple[int, ...]],
                           evidence: list[str]) -> None:
    key = SDXL_CROSS_ATTN if architecture == "sdxl" else CROSS_ATTN
    if not shapes.get(key):  # absent, or names only
        return
    width = shapes[key][-1]
    evidence.append(f"{width}-wide cross-attention (`{key.removeprefix('model.diffusion_model.')}`)")
    family = family_of(architecture)
    if width != family.cross_attention_dim and width >= 256:  # the tiny test models are narrower
        raise ModelLoadError(f"{source}: {family.display} text encoder keys but {width}-wide cross-attention "
                             f"({family.display} has {family.cross_attention_dim})", [
            "the file mixes parts of different models; " + SUPPORTED])


def _with_prediction(detection: Detection, shapes: Mapping[str, Any]) -> Detection:
    if V_PRED_KEY in shapes:
        ztsnr = ("the file also has a `ztsnr` key: it was trained with zero terminal SNR "
                 "(pass --zero_terminal_snr to train it that way)")
        notes = (ztsnr,) if ZTSNR_KEY in shapes else ()
        return Detection(detection.architecture, detection.evidence, "v_prediction",
                         "the file's `v_pred` key (ComfyUI's marker for v-prediction models)", notes)
    return detection


@dataclass(frozen=True)
class Prediction:
    prediction_type: str
    source: str  # a sentence: where it came from
    certain: bool  # False: assumed, and `source` names the flag that changes it


def resolve_prediction(architecture: str, file_prediction: str | None, file_evidence: str | None,
                       v2: bool = False, v_parameterization: bool = False) -> Prediction:
    """The prediction type: --v_parameterization, else what the file says, else --v2 (ε), else the default."""
    family = family_of(architecture)
    if v_parameterization:
        said = f" (the file says {file_prediction})" if file_prediction and file_prediction != "v_prediction" else ""
        return Prediction("v_prediction", f"--v_parameterization{said}", True)
    if file_prediction:
        return Prediction(file_prediction, file_evidence or "the file", True)
    if v2:
        return Prediction("epsilon", "--v2 without --v_parameterization (sd-scripts: SD2.x 512-base, epsilon)", True)
    default = family.default_prediction_type
    if architecture == "sd2":
        return Prediction(default, "assumed: SD2.x 512-base (epsilon) and 768-v (v) have the same weights' shapes and "
                          "this file does not say which it is; the default is 768-v (v_prediction); pass --v2 "
                          "without --v_parameterization for a 512-base / epsilon model", False)
    return Prediction(default, f"the {family.display} default: the file does not say; pass --v_parameterization "
                      "if this is a v-prediction fine-tune", False)


def detect_diffusers(folder: Path, model_index: Mapping[str, Any] | None, unet: Mapping[str, Any] | None,
                     text_encoder: Mapping[str, Any] | None, text_encoder_2: Mapping[str, Any] | None) -> Detection:
    """The family of a diffusers folder from its configs, or a ModelLoadError naming what it is."""
    pipeline = (model_index or {}).get("_class_name", "")
    for marker, what in (("Flux", "a FLUX model"), ("StableDiffusion3", "a Stable Diffusion 3 / 3.5 model"),
                         ("StableCascade", "a Stable Cascade model"), ("Wuerstchen", "a Würstchen model")):
        if marker in pipeline:
            raise refuse(folder, what, f"model_index.json `_class_name: {pipeline}`")
    if unet is None:
        raise refuse(folder, f"a {pipeline or 'diffusers'} folder without a unet/", "no `unet/config.json`")
    in_channels = unet.get("in_channels", 4)
    if in_channels != 4:
        what = _CHANNEL_VARIANTS.get(in_channels, f"a model whose UNet takes {in_channels} input channels")
        raise refuse(folder, what, f"unet/config.json `in_channels: {in_channels}`")
    if unet.get("addition_embed_type") == "text_time":
        if text_encoder is None or (unet.get("projection_class_embeddings_input_dim") == 2560):
            raise refuse(folder, "the SDXL refiner", "only text_encoder_2/ (OpenCLIP ViT-bigG), "
                         f"`projection_class_embeddings_input_dim: {unet.get('projection_class_embeddings_input_dim')}`",
                     SUPPORTED + "; train on the SDXL base model: the refiner only polishes its outputs")
        if text_encoder_2 is None:
            raise ModelLoadError(f"{folder}: an SDXL UNet (`addition_embed_type: text_time`) without text_encoder_2/",
                                 ["restore the folder's text_encoder_2/ (OpenCLIP ViT-bigG)"])
        return Detection("sdxl", ("`addition_embed_type: text_time` in unet/config.json",
                                  "text_encoder/ and text_encoder_2/ (two text encoders)"))
    if text_encoder is None:
        raise ModelLoadError(f"{folder}: no text_encoder/config.json", ["restore the folder's text_encoder/"])
    width = unet.get("cross_attention_dim")
    te_width = text_encoder.get("hidden_size")
    if width == 1024 and te_width == 1024:
        return Detection("sd2", ("1024-wide text encoder and cross-attention (OpenCLIP ViT-H)",))
    if width == 768 and te_width == 768:
        return Detection("sd1", ("768-wide text encoder and cross-attention (CLIP ViT-L)",))
    if width == te_width and width is not None and width < 256:
        # the tiny test architectures: SD2-style when its text encoder is OpenCLIP-like (gelu)
        arch = "sd2" if text_encoder.get("hidden_act") == "gelu" else "sd1"
        return Detection(arch, (f"{width}-wide tiny test architecture, {text_encoder.get('hidden_act')} text encoder",))
    raise refuse(folder, "an unknown model",
                 f"cross_attention_dim {width} with a {te_width}-wide text encoder (SD1.x: 768, SD2.x: 1024)")
