"""Architecture configs shipped inside the package, so no model ever needs the hub.

Each family is a folder under `configs/` laid out like a diffusers pipeline
(`unet/config.json`, `vae/config.json`, `text_encoder/config.json`,
`scheduler/scheduler_config.json`). `tiny` is the test architecture every other
tool in this project was checked against; `sd15` is Stable Diffusion 1.5;
`sdxl` is SDXL base 1.0 (two text encoders: CLIP ViT-L and OpenCLIP ViT-bigG);
`tiny-sdxl` has SDXL's block layout (3 levels, 1/2/10 transformer layers, text_time
embedding, two text encoders) at tiny widths, for tests. `sd2-768-v` and `sd2-512` are
Stable Diffusion 2.x (stabilityai/stable-diffusion-2-1 and -2-1-base): the same modules
(OpenCLIP ViT-H text encoder in Hugging Face layout, 23 of its 24 layers as diffusers
keeps them; linear transformer projections; per-level head dims 5/10/20/20), differing
only in prediction type (v vs. epsilon) and default size (768 vs. 512).
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any

FAMILIES = ("tiny", "sd15")
COMPONENTS = ("unet", "vae", "text_encoder", "scheduler")
# SDXL base 1.0 ships beside the SD1.x families but is not in FAMILIES yet: the
# SD1.x weight-matching tools iterate FAMILIES and have no second text encoder.
SDXL_FAMILY = "sdxl"
TINY_SDXL_FAMILY = "tiny-sdxl"
# SD2.x 768-v's shape at tiny widths: OpenCLIP-style text encoder (gelu, zero padding), linear
# transformer projections, per-level head counts, v-prediction.
TINY_SD2_FAMILY = "tiny-sd2"
SD2_768_V_FAMILY = "sd2-768-v"
SD2_512_FAMILY = "sd2-512"
# Config families per model family (library/models/family.py), real sizes first: a checkpoint's
# shapes are matched against these in order, so the first that fits names its config.
ARCHITECTURE_CONFIGS: dict[str, tuple[str, ...]] = {
    "sd1": ("sd15", "tiny"),
    "sd2": (SD2_768_V_FAMILY, SD2_512_FAMILY, TINY_SD2_FAMILY),
    "sdxl": (SDXL_FAMILY, TINY_SDXL_FAMILY),
}
_EXTRA_COMPONENTS = {SDXL_FAMILY: ("text_encoder_2",), TINY_SDXL_FAMILY: ("text_encoder_2",)}
SHIPPED = FAMILIES + (SDXL_FAMILY, TINY_SDXL_FAMILY, TINY_SD2_FAMILY, SD2_768_V_FAMILY, SD2_512_FAMILY)
_FILE_NAMES = {"scheduler": "scheduler_config.json"}


def load_shipped_config(family: str, component: str) -> dict[str, Any]:
    """A fresh copy of one shipped config (callers may modify it)."""
    if family not in SHIPPED:
        raise ValueError(f"unknown config family {family!r}; shipped: {', '.join(SHIPPED)}")
    allowed = family_components(family)
    if component not in allowed:
        raise ValueError(f"unknown component {component!r} for {family}; one of {', '.join(allowed)}")
    name = _FILE_NAMES.get(component, "config.json")
    node = resources.files("library.models").joinpath("configs").joinpath(family)
    text = node.joinpath(component).joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)


def family_components(family: str) -> tuple[str, ...]:
    """The components a shipped family has (SDXL adds `text_encoder_2`, OpenCLIP ViT-bigG)."""
    return COMPONENTS + _EXTRA_COMPONENTS.get(family, ())


def load_family_configs(family: str) -> dict[str, dict[str, Any]]:
    """All configs of a family (four, five for SDXL), keyed by component name."""
    return {component: load_shipped_config(family, component) for component in family_components(family)}


def architecture_of_config(family: str) -> str:
    """The model family ("sd1", "sd2", "sdxl") a shipped config family belongs to."""
    for architecture, families in ARCHITECTURE_CONFIGS.items():
        if family in families:
            return architecture
    raise ValueError(f"config family {family!r} belongs to no model family")
