"""State-dict conversion between the LDM single-file layout and diffusers modules.

Both directions use the same key table (`ldm_keys.ldm_key_table`), built from
the architecture's config and the module's own key list, so a round trip is a
permutation of names plus the VAE attention reshape ([C, C, 1, 1] <-> [C, C]):
bit-identical by construction.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from library.errors import ModelLoadError
from library.models.configs import load_family_configs
from library.models.ldm_keys import LDM_PREFIXES, is_vae_attention_matrix, ldm_key_table
from library.models.modules import expected_shapes

COMPONENTS = ("unet", "vae", "text_encoder")
# CLIP's position ids: a buffer, not a weight, but stored in the original SD1.x files
# (v1-4, v1-5: 196 weights + this = 197 tensors under the text-encoder prefix).
# We write it so our files have the official key set, and ignore it on load.
POSITION_IDS_KEY = f"{LDM_PREFIXES['text_encoder']}text_model.embeddings.position_ids"
IGNORED_LDM_KEYS = frozenset({POSITION_IDS_KEY})
_TEXT_SUBMODULES = ("embeddings.", "encoder.", "final_layer_norm.")
_SHOWN = 5


def to_ldm_tensor(ldm_key: str, tensor: torch.Tensor) -> torch.Tensor:
    if is_vae_attention_matrix(ldm_key) and tensor.ndim == 2:
        return tensor.reshape(*tensor.shape, 1, 1)
    return tensor


def from_ldm_tensor(ldm_key: str, tensor: torch.Tensor) -> torch.Tensor:
    if is_vae_attention_matrix(ldm_key) and tensor.ndim == 4:
        return tensor.reshape(tensor.shape[0], tensor.shape[1])
    return tensor


def component_to_ldm(component: str, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    """One diffusers/transformers component's weights under their full LDM names."""
    table = ldm_key_table(component, dict(config), list(state_dict))
    return {table[k]: to_ldm_tensor(table[k], v) for k, v in state_dict.items()}


def modules_to_ldm(modules: Mapping[str, torch.nn.Module], architecture: str = "sd1",
                   extras: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A model family's modules as one LDM-layout state dict (what A1111, ComfyUI and sd-scripts read).

    SD1.x: UNet, VAE and CLIP text encoder (with its position ids). SD2.x and SDXL: see
    ldm_layout.py; `extras` are tensors the source file had that no module holds.
    """
    from library.models.ldm_layout import modules_to_ldm as family_modules_to_ldm

    return family_modules_to_ldm(architecture, modules, extras)


def normalise_old_clip_keys(ldm: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Some early SD1.x files name CLIP weights without `text_model.` (older transformers); add it."""
    prefix = LDM_PREFIXES["text_encoder"]
    old = tuple(prefix + sub for sub in _TEXT_SUBMODULES)
    return {(prefix + "text_model." + k[len(prefix):] if k.startswith(old) else k): v for k, v in ldm.items()}


def ldm_to_component(path: Path, family: str, component: str, ldm: Mapping[str, torch.Tensor],
                     prefix_override: str | None = None) -> dict[str, torch.Tensor]:
    """Pick one component's tensors out of an LDM state dict, renamed and checked against `family`."""
    config = load_family_configs(family)[component]
    shapes = expected_shapes(family, component)
    table = ldm_key_table(component, config, list(shapes))
    if prefix_override is not None:
        strip = len(LDM_PREFIXES[component])
        table = {k: prefix_override + v[strip:] for k, v in table.items()}
    out, problems = {}, []
    for diffusers_key, ldm_key in table.items():
        if ldm_key not in ldm:
            problems.append(f"missing {ldm_key}")
            continue
        tensor = from_ldm_tensor(ldm_key, ldm[ldm_key])
        if tuple(tensor.shape) != shapes[diffusers_key]:
            problems.append(f"{ldm_key}: shape {list(tensor.shape)}, expected {list(shapes[diffusers_key])}")
            continue
        out[diffusers_key] = tensor
    if problems:
        raise ModelLoadError(
            f"{path}: the {component} weights do not match the SD1.x layout ({len(problems)} problems)",
            problems[:_SHOWN] + ([f"... and {len(problems) - _SHOWN} more"] if len(problems) > _SHOWN else [])
            + ["the file may be damaged, or a different architecture; re-download it or use a diffusers folder"],
        )
    return out
