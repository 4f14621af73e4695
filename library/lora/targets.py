"""Which layers of a Stable Diffusion 1.x model get a LoRA, named as sd-scripts names them.

sd-scripts `networks.lora` looks inside blocks by class name:
- UNet: every Linear and Conv2d inside a `Transformer2DModel` (attention q/k/v/out,
  feed-forward, 1x1 proj_in/proj_out);
- with conv_dim set (LoCon), also the layers inside `ResnetBlock2D`, `Downsample2D`,
  `Upsample2D`: 3x3 convs take the conv rank, 1x1 convs and Linears the linear rank;
- text encoder: Linears inside CLIP attention and CLIP MLP. transformers has named
  the attention class `CLIPAttention`, `CLIPSdpaAttention`, `CLIPFlashAttention2`...;
  matching only one spelling silently drops every text-encoder LoRA, so we match
  the family by pattern.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from library.lora import keys

UNET_BLOCKS = ("Transformer2DModel",)
# LyCORIS' "full" preset (lycoris/config.py) also adapts these UNet layers by name
LYCORIS_EXTRA_UNET_LAYERS = ("conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2")
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
_TE_BLOCK_RE = re.compile(r"^CLIP\w*Attention\w*$|^CLIPMLP$")


@dataclass(frozen=True, eq=False)
class Target:
    """One adaptable layer: its Kohya name, real module path and kind."""

    name: str
    path: str
    layer: nn.Module
    root: nn.Module
    component: str  # "unet" | "text_encoder"
    kind: str  # "linear" | "conv1x1" | "conv"


def layer_kind(layer: nn.Module) -> str | None:
    if isinstance(layer, nn.Linear):
        return "linear"
    if isinstance(layer, nn.Conv2d):
        return "conv1x1" if tuple(layer.kernel_size) == (1, 1) else "conv"
    return None


def _unwrap(module: nn.Module) -> nn.Module:
    """A layer already wrapped by a LoRA host counts as its base layer."""
    return getattr(module, "base_layer", module) if getattr(module, "is_lora_host", False) else module


def _layers_in(block: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for child_path, child in block.named_modules():
        if child_path.rsplit(".", 1)[-1] == "base_layer":
            continue
        layer = _unwrap(child)
        if layer_kind(layer) is not None:
            yield child_path, layer


def _is_te_block(module: nn.Module) -> bool:
    return bool(_TE_BLOCK_RE.match(type(module).__name__))


def _kohya_name(component: str, path: str) -> str:
    if component == "unet":
        return keys.module_name(keys.UNET_PREFIX, path)
    return keys.module_name(keys.TEXT_ENCODER_PREFIX, keys.text_encoder_path(path))


def _collect(root: nn.Module, component: str, is_block, out: dict[str, Target]) -> None:
    for block_path, block in root.named_modules():
        if not is_block(block):
            continue
        for child_path, layer in _layers_in(block):
            path = ".".join(p for p in (block_path, child_path) if p)
            name = _kohya_name(component, path)
            out.setdefault(name, Target(name, path, layer, root, component, layer_kind(layer) or ""))


def find_targets(
    unet: nn.Module | None,
    text_encoder: nn.Module | None,
    *,
    conv: bool = False,
    extra_unet_layers: tuple[str, ...] = (),
) -> list[Target]:
    """sd-scripts' LoRA targets, text encoder first (sd-scripts' order), then UNet.

    `extra_unet_layers` are module paths adapted as well (LyCORIS' preset), after the blocks.
    """
    found: dict[str, Target] = {}
    if text_encoder is not None:
        _collect(text_encoder, "text_encoder", _is_te_block, found)
    if unet is not None:
        names = UNET_BLOCKS + (UNET_CONV_BLOCKS if conv else ())
        _collect(unet, "unet", lambda m: type(m).__name__ in names, found)
        for path in extra_unet_layers:
            try:
                layer = _unwrap(unet.get_submodule(path))
            except AttributeError:
                continue
            if layer_kind(layer) is not None:
                name = _kohya_name("unet", path)
                found.setdefault(name, Target(name, path, layer, unet, "unet", layer_kind(layer) or ""))
    return list(found.values())


def all_layers(unet: nn.Module | None, text_encoder: nn.Module | None) -> dict[str, Target]:
    """Every Linear/Conv2d of both models by Kohya name: what a foreign LoRA may address."""
    found: dict[str, Target] = {}
    for root, component in ((text_encoder, "text_encoder"), (unet, "unet")):
        if root is None:
            continue
        for path, layer in _layers_in(root):
            name = _kohya_name(component, path)
            found.setdefault(name, Target(name, path, layer, root, component, layer_kind(layer) or ""))
    return found
