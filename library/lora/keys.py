"""Kohya (sd-scripts) key names for LoRA tensors.

A LoRA file stores three tensors per adapted layer:
`<name>.lora_down.weight`, `<name>.lora_up.weight` and the 0-d `<name>.alpha`,
where `<name>` is `lora_unet_` or `lora_te_` followed by the layer's module path
with every `.` replaced by `_`. AUTOMATIC1111, ComfyUI and diffusers all read
this layout, so it is the one we write. LyCORIS' algorithms use the same module
names with their own tensor names (`hada_w1_a`..., `lokr_w1`..., `dora_scale`);
library.lora.algorithms says what each means.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

UNET_PREFIX = "lora_unet"
TEXT_ENCODER_PREFIX = "lora_te"
DOWN = "lora_down.weight"
UP = "lora_up.weight"
MID = "lora_mid.weight"  # Tucker LoCon core (LyCORIS use_tucker)
ALPHA = "alpha"
LYCORIS_SUFFIXES = (
    MID,
    "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
    "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
    "dora_scale",
)
SUFFIXES = (DOWN, UP, ALPHA) + LYCORIS_SUFFIXES

# transformers 5 flattened CLIPTextModel (no `.text_model`); Kohya names keep it.
TEXT_MODEL_SCOPE = "text_model."

_BLOCK_RE = re.compile(r"^lora_unet_(down_blocks_\d+|up_blocks_\d+|mid_block|input_blocks_\d+|middle_block|output_blocks_\d+)")
_TE_LAYER_RE = re.compile(r"^lora_te(\d?)_text_model_encoder_layers_(\d+)_")


def module_name(prefix: str, module_path: str) -> str:
    """Kohya module name: `prefix` + `.` + path, then every `.` becomes `_`."""
    return f"{prefix}.{module_path}".replace(".", "_")


def text_encoder_path(module_path: str) -> str:
    """Module path as sd-scripts sees the CLIP text encoder (always under `text_model.`)."""
    if module_path.startswith(TEXT_MODEL_SCOPE):
        return module_path
    return TEXT_MODEL_SCOPE + module_path


def split_key(key: str) -> tuple[str, str] | None:
    """`name.lora_down.weight` -> (`name`, `lora_down.weight`) (also LyCORIS keys); None for other keys."""
    for suffix in SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return None


def group_by_module(state_dict: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Group Kohya tensors by module name; also return keys that are not Kohya keys."""
    modules: dict[str, dict[str, Any]] = {}
    other: list[str] = []
    for key, value in state_dict.items():
        parts = split_key(key)
        if parts is None:
            other.append(key)
            continue
        modules.setdefault(parts[0], {})[parts[1]] = value
    return modules, other


def is_kohya_key(key: str) -> bool:
    parts = split_key(key)
    return parts is not None and parts[0].startswith((UNET_PREFIX + "_", TEXT_ENCODER_PREFIX))


def component_of(name: str) -> str:
    """'unet' or 'text_encoder' for a Kohya module name."""
    return "unet" if name.startswith(UNET_PREFIX + "_") else "text_encoder"


def block_of(name: str) -> str:
    """Coarse block a module belongs to, for per-block summaries (`down_blocks_1`, `te_layer_0`...)."""
    match = _BLOCK_RE.match(name)
    if match:
        return match.group(1)
    match = _TE_LAYER_RE.match(name)
    if match:
        return f"te{match.group(1)}_layer_{match.group(2)}"  # SDXL: te1_layer_N / te2_layer_N
    return "unet_other" if name.startswith(UNET_PREFIX + "_") else "te_other"


def effective_alpha(alpha: float | None, rank: int) -> float:
    """sd-scripts rule: alpha None or 0 means alpha = rank (scale 1)."""
    if alpha is None or alpha == 0:
        return float(rank)
    return float(alpha)
