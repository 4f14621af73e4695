"""Architecture configs shipped inside the package, so no model ever needs the hub.

Each family is a folder under `configs/` laid out like a diffusers pipeline
(`unet/config.json`, `vae/config.json`, `text_encoder/config.json`,
`scheduler/scheduler_config.json`). `tiny` is the test architecture every other
tool in this project was checked against; `sd15` is Stable Diffusion 1.5.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any

FAMILIES = ("tiny", "sd15")
COMPONENTS = ("unet", "vae", "text_encoder", "scheduler")
_FILE_NAMES = {"scheduler": "scheduler_config.json"}


def load_shipped_config(family: str, component: str) -> dict[str, Any]:
    """A fresh copy of one shipped config (callers may modify it)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown config family {family!r}; shipped: {', '.join(FAMILIES)}")
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; one of {', '.join(COMPONENTS)}")
    name = _FILE_NAMES.get(component, "config.json")
    node = resources.files("library.models").joinpath("configs").joinpath(family)
    text = node.joinpath(component).joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)


def load_family_configs(family: str) -> dict[str, dict[str, Any]]:
    """All four configs of a family, keyed by component name."""
    return {component: load_shipped_config(family, component) for component in COMPONENTS}
