"""Kohya module names per model family: what sd-scripts calls each adapted layer.

- SD1.x / SD2.x: `lora_unet_` + the diffusers UNet path, `lora_te_` + the Hugging Face
  CLIP path (`text_model.encoder.layers.N...`). SD2's OpenCLIP-H is named after its
  conversion to HF CLIP, so its names have the same shape.
- SDXL: sd-scripts builds LoRA over its own SGM-layout UNet (sdxl_original_unet), so the
  UNet names are `lora_unet_` + the original SGM path (`input_blocks.4.1.transformer_blocks.0.attn1.to_q`
  becomes `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`), and the two text
  encoders are `lora_te1_` (CLIP ViT-L) and `lora_te2_` (OpenCLIP ViT-bigG in HF layout).

We train on diffusers modules; the SGM path of each diffusers path comes from the same
config-driven table the checkpoint converter uses (`ldm_keys.unet_prefix_pairs`), plus the
SDXL-only `add_embedding` (SGM `label_emb.0.0` / `label_emb.0.2`).

A LoRA written with diffusers-style names for an SDXL model (PEFT `unet.down_blocks...`,
`text_encoder.` / `text_encoder_2.`) is renamed to the model's scheme on load
(`canonical_name`), so one adapter name space serves training, saving and loading.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from torch import nn

from library.lora import keys

# SDXL's pooled-text + size-id embedding MLP: diffusers `add_embedding.linear_1/2`, SGM `label_emb.0.0/0.2`
_SDXL_EXTRA = (("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."))


def unet_config(unet: nn.Module | None) -> dict[str, Any]:
    cfg = getattr(unet, "config", None)
    return dict(cfg) if cfg is not None else {}


def is_sdxl_unet(unet: nn.Module | None) -> bool:
    """SDXL's UNet takes pooled text and size ids (`addition_embed_type: text_time`)."""
    return unet_config(unet).get("addition_embed_type") == "text_time"


def text_encoder_list(text_encoder: nn.Module | Sequence[nn.Module] | None) -> list[nn.Module]:
    """One module, a list of them (SDXL: te1, te2) or None, as a list."""
    if text_encoder is None:
        return []
    if isinstance(text_encoder, nn.Module):
        return [text_encoder]
    return [m for m in text_encoder if m is not None]


def text_encoder_prefixes(count: int) -> tuple[str, ...]:
    """sd-scripts' prefixes: `lora_te` for one encoder, `lora_te1`, `lora_te2` for SDXL's two."""
    if count <= 1:
        return (keys.TEXT_ENCODER_PREFIX,)
    return tuple(f"{keys.TEXT_ENCODER_PREFIX}{i + 1}" for i in range(count))


def _freeze(cfg: dict[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in cfg.items()
                        if k in ("down_block_types", "up_block_types", "block_out_channels", "layers_per_block")))


@lru_cache(maxsize=16)
def _sgm_pairs(frozen: tuple) -> tuple[tuple[str, str, str], ...]:
    from library.models.ldm_keys import unet_prefix_pairs

    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in frozen}
    return tuple(unet_prefix_pairs(cfg))


def sgm_unet_path(cfg: dict[str, Any], path: str) -> str:
    """The SGM/LDM module path of a diffusers UNet module path (SDXL's naming); unknown paths unchanged."""
    from library.models.ldm_keys import ldm_key_table

    for diffusers_prefix, sgm_prefix in _SDXL_EXTRA:
        if (path + ".").startswith(diffusers_prefix):
            return sgm_prefix[:-1] + path[len(diffusers_prefix) - 1:]
    pairs = _sgm_pairs(_freeze(cfg))
    if not any((path + ".").startswith(p[0]) for p in pairs):
        return path
    full = ldm_key_table("unet", cfg, [path + ".weight"])[path + ".weight"]
    return full[len("model.diffusion_model."):-len(".weight")]


class Naming:
    """Kohya names for one model: its UNet scheme and its text-encoder prefixes."""

    def __init__(self, unet: nn.Module | None, text_encoders: Sequence[nn.Module] = ()) -> None:
        self.sdxl = is_sdxl_unet(unet)
        self.cfg = unet_config(unet) if self.sdxl else {}
        self.te_prefixes = text_encoder_prefixes(len(text_encoders) if text_encoders else (2 if self.sdxl else 1))
        self.aliases: dict[str, str] = {}

    def unet(self, path: str) -> str:
        return keys.module_name(keys.UNET_PREFIX, sgm_unet_path(self.cfg, path) if self.sdxl else path)

    def text_encoder(self, index: int, path: str) -> str:
        return keys.module_name(self.te_prefixes[index], keys.text_encoder_path(path))

    def canonical_name(self, name: str) -> str:
        """A file's module name in this model's scheme (diffusers-style SDXL names → SGM, lora_te → lora_te1).

        `aliases` ({diffusers-style name: SGM name}) is filled by `targets.all_layers`.
        """
        if not self.sdxl:
            return name
        if name.startswith(keys.TEXT_ENCODER_PREFIX + "_"):
            return self.te_prefixes[0] + name[len(keys.TEXT_ENCODER_PREFIX):]
        return self.aliases.get(name, name)


def lora_architecture(names: Sequence[str], te_in_features: int | None = None) -> str:
    """Which family a LoRA's module names were written for: SDXL (te1/te2, SGM UNet paths) or SD1/SD2.

    SD1.x and SD2.x share the naming; a text-encoder module's input width (768 / 1024) tells them apart.
    """
    sgm = ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_", "lora_unet_label_emb_")
    if any(n.startswith(("lora_te1_", "lora_te2_") + sgm) for n in names):
        return "SDXL"
    return {768: "SD1.x", 1024: "SD2.x"}.get(te_in_features or 0, "SD1.x/SD2.x")


def model_architecture(unet: nn.Module | None) -> str:
    """The family of a UNet by its config: SDXL (text_time), SD1.x (768-wide text), SD2.x (1024)."""
    if is_sdxl_unet(unet):
        return "SDXL"
    width = unet_config(unet).get("cross_attention_dim")
    return {768: "SD1.x", 1024: "SD2.x"}.get(width, f"SD1.x/SD2.x-style (text width {width})")
