"""Telling SD1.x apart from architectures we cannot train yet, before building anything.

SD2.x uses OpenCLIP ViT-H (1024-dim text features, `cond_stage_model.model.*`
in LDM files) and, for its 768 px models, v-prediction. SDXL has two text
encoders (`conditioner.embedders.*`, `text_encoder_2/`) and extra time
embeddings. Each is refused with a message saying what it is, rather than
failing later with a shape error.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from library.errors import ModelLoadError

_UNSUPPORTED_HINT = "lorasmith trains Stable Diffusion 1.x LoRAs; use an SD1.x base model (e.g. SD 1.5 or a fine-tune of it)"


def _refuse(source: Path | str, what: str, evidence: str) -> ModelLoadError:
    return ModelLoadError(f"{source} is {what}, which lorasmith does not support yet", [
        f"recognised by: {evidence}", _UNSUPPORTED_HINT,
    ])


def check_ldm_keys(source: Path | str, keys: Iterable[str], cross_attn_width: int | None) -> None:
    """Refuse SDXL and SD2.x single-file checkpoints from their key names and shapes."""
    keys = list(keys)
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise _refuse(source, "an SDXL checkpoint", "its `conditioner.embedders.*` keys (two text encoders)")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise _refuse(source, "a Stable Diffusion 2.x checkpoint",
                      "its OpenCLIP text encoder keys `cond_stage_model.model.*`")
    if cross_attn_width == 1024:
        raise _refuse(source, "a Stable Diffusion 2.x checkpoint", "its 1024-wide cross-attention (SD1.x uses 768)")


def check_diffusers_configs(folder: Path, unet: dict[str, Any], text_encoder: dict[str, Any],
                            scheduler: dict[str, Any] | None) -> None:
    """Refuse SDXL and SD2.x diffusers folders from their configs."""
    if (folder / "text_encoder_2").is_dir() or unet.get("addition_embed_type") == "text_time":
        raise _refuse(folder, "an SDXL model", "its second text encoder / `addition_embed_type: text_time`")
    if unet.get("cross_attention_dim") == 1024 or text_encoder.get("hidden_size") == 1024:
        raise _refuse(folder, "a Stable Diffusion 2.x model", "its 1024-wide text encoder / cross-attention")
    if scheduler and scheduler.get("prediction_type") == "v_prediction":
        raise _refuse(folder, "a v-prediction model (like SD 2.x 768-v)", "`prediction_type: v_prediction`")
    if unet.get("in_channels", 4) != 4:
        raise ModelLoadError(f"{folder}: UNet has {unet.get('in_channels')} input channels", [
            "inpainting/instruct models (9 or 8 channels) are not supported; use a regular SD1.x model",
        ])
