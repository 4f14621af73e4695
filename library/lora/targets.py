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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import nn

from library.lora import keys
from library.lora.naming import Naming, text_encoder_list

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


def _collect(root: nn.Module, component: str, is_block, out: dict[str, Target], name_of) -> None:
    for block_path, block in root.named_modules():
        if not is_block(block):
            continue
        for child_path, layer in _layers_in(block):
            path = ".".join(p for p in (block_path, child_path) if p)
            name = name_of(path)
            out.setdefault(name, Target(name, path, layer, root, component, layer_kind(layer) or ""))


def find_targets(
    unet: nn.Module | None,
    text_encoder: nn.Module | Sequence[nn.Module] | None,
    *,
    conv: bool = False,
    extra_unet_layers: tuple[str, ...] = (),
) -> list[Target]:
    """sd-scripts' LoRA targets, text encoder first (sd-scripts' order), then UNet.

    `text_encoder` is one module or SDXL's (te1, te2); names follow the family (library.lora.naming).
    `extra_unet_layers` are module paths adapted as well (LyCORIS' preset), after the blocks.
    """
    encoders = text_encoder_list(text_encoder)
    naming = Naming(unet, encoders)
    found: dict[str, Target] = {}
    for index, encoder in enumerate(encoders):
        _collect(encoder, "text_encoder", _is_te_block, found, lambda p, i=index: naming.text_encoder(i, p))
    if unet is not None:
        names = UNET_BLOCKS + (UNET_CONV_BLOCKS if conv else ())
        _collect(unet, "unet", lambda m: type(m).__name__ in names, found, naming.unet)
        for path in extra_unet_layers:
            try:
                layer = _unwrap(unet.get_submodule(path))
            except AttributeError:
                continue
            if layer_kind(layer) is not None:
                name = naming.unet(path)
                found.setdefault(name, Target(name, path, layer, unet, "unet", layer_kind(layer) or ""))
    return list(found.values())


def all_layers(unet: nn.Module | None, text_encoder: nn.Module | Sequence[nn.Module] | None,
               naming: Naming | None = None) -> dict[str, Target]:
    """Every Linear/Conv2d of the models by Kohya name: what a foreign LoRA may address.

    With `naming`, its `aliases` learn the diffusers-style name of every SDXL UNet layer.
    """
    encoders = text_encoder_list(text_encoder)
    naming = naming or Naming(unet, encoders)
    found: dict[str, Target] = {}
    for index, encoder in enumerate(encoders):
        for path, layer in _layers_in(encoder):
            name = naming.text_encoder(index, path)
            found.setdefault(name, Target(name, path, layer, encoder, "text_encoder", layer_kind(layer) or ""))
    if unet is not None:
        for path, layer in _layers_in(unet):
            name = naming.unet(path)
            if naming.sdxl:
                naming.aliases[keys.module_name(keys.UNET_PREFIX, path)] = name
            found.setdefault(name, Target(name, path, layer, unet, "unet", layer_kind(layer) or ""))
    return found
