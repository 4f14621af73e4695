"""Other LoRA key layouts converted to Kohya's on load.

Handled layouts (the module path is the diffusers/transformers one):
- PEFT / diffusers >= 0.2x: `unet.<path>.lora_A.weight` / `.lora_B.weight`
  (optionally `.lora_A.<adapter>.weight`), `text_encoder.<path>...`;
- diffusers `LoRACompatible*` layers: `<path>.lora.down.weight` / `.lora.up.weight`;
- diffusers attention processors: `<attn>.processor.to_q_lora.down.weight`,
  text encoder `<path>.lora_linear_layer.down.weight`.
PEFT files carry no per-module alpha; their scale is `lora_alpha / r` from the
`lora_adapter_metadata` JSON diffusers writes, or 1 (alpha = rank) without it.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping

import torch

from library.lora import keys

_ROLE_SUFFIXES = (
    (re.compile(r"\.lora_A(?:\.[\w-]+)?\.weight$"), keys.DOWN),
    (re.compile(r"\.lora_B(?:\.[\w-]+)?\.weight$"), keys.UP),
    (re.compile(r"\.lora(?:_linear_layer)?\.down\.weight$"), keys.DOWN),
    (re.compile(r"\.lora(?:_linear_layer)?\.up\.weight$"), keys.UP),
    (re.compile(r"_lora\.down\.weight$"), keys.DOWN),
    (re.compile(r"_lora\.up\.weight$"), keys.UP),
    (re.compile(r"\.alpha$"), keys.ALPHA),
)
_PROCESSOR_RE = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")
_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "time_embedding.")
_COMPONENT_PREFIXES = (("unet.", "unet"), ("text_encoder.", "text_encoder"), ("text_encoder_2.", "text_encoder_2"),
                       ("te.", "text_encoder"), ("te1.", "text_encoder"), ("te2.", "text_encoder_2"))


def detect_format(state_dict: Mapping[str, object]) -> str:
    """'kohya', 'peft' (lora_A/lora_B), 'diffusers' (older down/up layouts) or 'unknown'."""
    names = list(state_dict)
    if names and all(keys.is_kohya_key(k) for k in names):
        return "kohya"
    if any(".lora_A." in k or ".lora_B." in k for k in names):
        return "peft"
    if any(k.endswith(("down.weight", "up.weight")) for k in names):
        return "diffusers"
    return "unknown"


def _split_component(key: str) -> tuple[str | None, str]:
    for prefix, component in _COMPONENT_PREFIXES:
        if key.startswith(prefix):
            return component, key[len(prefix):]
    if key.startswith(_UNET_ROOTS):
        return "unet", key
    if key.startswith(("text_model.", "encoder.layers.")):
        return "text_encoder", key
    return None, key


def _role(key: str) -> tuple[str, str] | None:
    for pattern, role in _ROLE_SUFFIXES:
        match = pattern.search(key)
        if match:
            return key[: match.start()], role
    return None


def _module_path(path: str) -> str:
    path = _PROCESSOR_RE.sub(lambda m: "." + m.group(1), path)
    return path + ".0" if path.endswith(".to_out") else path


def kohya_name_for(component: str, path: str) -> str:
    """Kohya name of a diffusers-layout path; SDXL's second encoder (`text_encoder_2.`) is `lora_te2_`.

    The UNet and the first encoder keep diffusers-style names (`lora_unet_down_blocks_…`,
    `lora_te_…`); loading renames them to an SDXL model's scheme (library.lora.naming).
    """
    if component == "unet":
        return keys.module_name(keys.UNET_PREFIX, path)
    prefix = keys.TEXT_ENCODER_PREFIX + "2" if component == "text_encoder_2" else keys.TEXT_ENCODER_PREFIX
    return keys.module_name(prefix, keys.text_encoder_path(path))


def to_kohya(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """(Kohya state dict, source format, keys that could not be placed)."""
    source = detect_format(state_dict)
    if source == "kohya":
        return dict(state_dict), source, []
    out: dict[str, torch.Tensor] = {}
    unplaced: list[str] = []
    paths: dict[str, tuple[str, str]] = {}
    for key, value in state_dict.items():
        component, rest = _split_component(key)
        role = _role(rest)
        if component is None or role is None:
            if keys.is_kohya_key(key):
                out[key] = value
            else:
                unplaced.append(key)
            continue
        path = _module_path(role[0])
        name = kohya_name_for(component, path)
        out[f"{name}.{role[1]}"] = value
        paths[name] = (component, path)
    _fill_peft_alphas(out, paths, _adapter_metadata(metadata))
    return out, source, unplaced


def _adapter_metadata(metadata: Mapping[str, str] | None) -> dict:
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _fill_peft_alphas(out: dict[str, torch.Tensor], paths: dict[str, tuple[str, str]], adapter_meta: dict) -> None:
    """Give every module an alpha: from the PEFT config when known, else its rank (scale 1)."""
    for name, (component, path) in paths.items():
        alpha_key = f"{name}.{keys.ALPHA}"
        down = out.get(f"{name}.{keys.DOWN}")
        if alpha_key in out or down is None:
            continue
        rank = int(down.shape[0])
        alpha = _peft_alpha(adapter_meta, component, path)
        out[alpha_key] = torch.tensor(float(rank if alpha is None else alpha))


def _peft_alpha(adapter_meta: dict, component: str, path: str) -> float | None:
    pattern = adapter_meta.get(f"{component}.alpha_pattern") or {}
    for suffix, value in pattern.items():
        if path.endswith(suffix):
            return float(value)
    value = adapter_meta.get(f"{component}.lora_alpha")
    return None if value is None else float(value)
