"""Key names of the original (LDM / CompVis) checkpoint layout vs. diffusers modules.

Pure functions from an architecture config to a table {diffusers key -> LDM
key}; conversion in either direction is a lookup in that table. The layout
facts they encode (public, from the CompVis `openaimodel.py` UNet and the LDM
autoencoder):

UNet (`model.diffusion_model.`): `input_blocks.0.0` is conv_in; level i's layer j
is `input_blocks.{1 + i*(L+1) + j}` (`.0` resnet, `.1` attention) with L layers
per block, its downsampler `input_blocks.{(i+1)*(L+1)}.0.op`; `middle_block.0/1/2`
are resnet/attention/resnet; up level i's layer j is `output_blocks.{i*(L+1)+j}`,
its upsampler the last sub-module of the level's last block; `time_embed.0/2`,
`out.0/2` are the time MLP and the output norm/conv. Resnets use `in_layers.0/2`,
`emb_layers.1`, `out_layers.0/3`, `skip_connection`.

VAE (`first_stage_model.`): `encoder.down.{i}.block.{j}` / `.downsample`,
`decoder.up.{n-1-i}.block.{j}` / `.upsample` (decoder levels are numbered in
reverse), `mid.block_1/attn_1/block_2`, `norm_out`; resnets use `nin_shortcut`;
mid attention uses 1x1 convs `q,k,v,proj_out` and `norm`.

Text encoder (`cond_stage_model.transformer.`): the HF CLIP names under `text_model.`.
"""
from __future__ import annotations

from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
LDM_PREFIXES = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": TEXT_PREFIX}

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_down_pairs(cfg: dict[str, Any]) -> list[tuple[str, str, str]]:
    layers, levels = cfg["layers_per_block"], len(cfg["block_out_channels"])
    pairs = []
    for i, block_type in enumerate(cfg["down_block_types"]):
        for j in range(layers):
            ldm = 1 + i * (layers + 1) + j
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{ldm}.0.", "resnet"))
            if block_type.startswith("CrossAttn"):
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{ldm}.1.", "plain"))
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (layers + 1)}.0.op.",
                          "plain"))
    return pairs


def _unet_up_pairs(cfg: dict[str, Any]) -> list[tuple[str, str, str]]:
    layers, levels = cfg["layers_per_block"], len(cfg["block_out_channels"])
    pairs = []
    for i, block_type in enumerate(cfg["up_block_types"]):
        has_attention = block_type.startswith("CrossAttn")
        for j in range(layers + 1):
            ldm = i * (layers + 1) + j
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{ldm}.0.", "resnet"))
            if has_attention:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{ldm}.1.", "plain"))
        if i < levels - 1:
            last = i * (layers + 1) + layers
            pairs.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{last}.{2 if has_attention else 1}.conv.",
                          "plain"))
    return pairs


def unet_prefix_pairs(cfg: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(diffusers prefix, LDM prefix, kind) for every block of an SD1/SD2/SDXL UNet.

    SDXL's SGM UNet (`sgm/modules/diffusionmodules/openaimodel.py`) keeps the CompVis block
    numbering; transformer depth per level lives inside `input_blocks.N.1.transformer_blocks.*`,
    and its `add_embedding` MLP is `label_emb.0.0` / `label_emb.0.2`.
    """
    pairs = [
        ("conv_in.", "input_blocks.0.0.", "plain"),
        ("time_embedding.linear_1.", "time_embed.0.", "plain"),
        ("time_embedding.linear_2.", "time_embed.2.", "plain"),
        ("conv_norm_out.", "out.0.", "plain"),
        ("conv_out.", "out.2.", "plain"),
        ("mid_block.resnets.0.", "middle_block.0.", "resnet"),
        ("mid_block.attentions.0.", "middle_block.1.", "plain"),
        ("mid_block.resnets.1.", "middle_block.2.", "resnet"),
    ]
    if cfg.get("addition_embed_type") == "text_time":  # SDXL's size/crop/pooled-text embedding MLP
        pairs += [("add_embedding.linear_1.", "label_emb.0.0.", "plain"),
                  ("add_embedding.linear_2.", "label_emb.0.2.", "plain")]
    return pairs + _unet_down_pairs(cfg) + _unet_up_pairs(cfg)


def vae_prefix_pairs(cfg: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(diffusers prefix, LDM prefix, kind) for every block of an SD-style AutoencoderKL."""
    levels, layers = len(cfg["block_out_channels"]), cfg["layers_per_block"]
    pairs = [("quant_conv.", "quant_conv.", "plain"), ("post_quant_conv.", "post_quant_conv.", "plain")]
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.conv_in.", f"{part}.conv_in.", "plain"),
            (f"{part}.conv_out.", f"{part}.conv_out.", "plain"),
            (f"{part}.conv_norm_out.", f"{part}.norm_out.", "plain"),
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", "vae_resnet"),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", "vae_attention"),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", "vae_resnet"),
        ]
    for i in range(levels):
        for j in range(layers):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", "vae_resnet"))
        if i < levels - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", "plain"))
        ldm_level = levels - 1 - i
        for j in range(layers + 1):
            pairs.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{ldm_level}.block.{j}.", "vae_resnet"))
        if i < levels - 1:
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{ldm_level}.upsample.conv.", "plain"))
    return pairs


_RENAMES = {"plain": {}, "resnet": _UNET_RESNET, "vae_resnet": _VAE_RESNET, "vae_attention": _VAE_ATTENTION}


def _map_key(key: str, pairs: list[tuple[str, str, str]]) -> str:
    for diffusers_prefix, ldm_prefix, kind in pairs:
        if key.startswith(diffusers_prefix):
            rest = key[len(diffusers_prefix):]
            for old, new in _RENAMES[kind].items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            return ldm_prefix + rest
    raise KeyError(f"no LDM name for diffusers key {key!r}")


def ldm_key_table(component: str, cfg: dict[str, Any], diffusers_keys: list[str]) -> dict[str, str]:
    """{diffusers key: full LDM key (with its checkpoint prefix)} for one component."""
    prefix = LDM_PREFIXES[component]
    if component == "text_encoder":
        return {k: f"{prefix}text_model.{k}" for k in diffusers_keys}
    pairs = unet_prefix_pairs(cfg) if component == "unet" else vae_prefix_pairs(cfg)
    return {k: prefix + _map_key(k, pairs) for k in diffusers_keys}


def is_vae_attention_matrix(ldm_key: str) -> bool:
    """LDM's VAE mid-attention q/k/v/proj_out are 1x1 convs; diffusers stores them as Linear."""
    parts = ldm_key.split(".")
    return "attn_1" in parts and parts[-1] == "weight" and parts[-2] in ("q", "k", "v", "proj_out")
