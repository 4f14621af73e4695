"""OpenCLIP text transformer <-> Hugging Face CLIPTextModel key names, both ways, exact.

SD2 stores its OpenCLIP ViT-H text encoder under `cond_stage_model.model.` and SDXL its
OpenCLIP ViT-bigG under `conditioner.embedders.1.model.`; both use OpenCLIP's layout:
`transformer.resblocks.N.attn.in_proj_weight/bias` (q, k, v fused along dim 0),
`attn.out_proj`, `ln_1`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, `token_embedding.weight`,
`positional_embedding`, `ln_final`, `text_projection` (`[width, proj]`, applied as
`x @ text_projection`). Hugging Face's `text_projection.weight` is a Linear weight, i.e.
its transpose. SD2 runs the encoder to the penultimate layer, so its HF config has 23 of
the 24 stored layers: `num_layers` chooses how many are converted, and
`openclip_unconverted` returns what was left (to write it back unchanged on save).
"""

from __future__ import annotations

import re

import torch

Tensor = torch.Tensor

_LAYER_PARTS = {  # OpenCLIP resblock suffix -> HF encoder layer suffix (except the fused in_proj)
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP = {  # OpenCLIP top-level key -> HF key
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_RESBLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)$")


def split_in_proj(fused: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """OpenCLIP's fused in_proj (3*width along dim 0) -> q, k, v (nn.MultiheadAttention's order)."""
    if fused.shape[0] % 3:
        raise ValueError(f"in_proj has {fused.shape[0]} rows, not a multiple of 3")
    q, k, v = fused.chunk(3, dim=0)
    return q.clone(), k.clone(), v.clone()


def fuse_in_proj(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """q, k, v -> OpenCLIP's fused in_proj (the inverse of split_in_proj)."""
    return torch.cat([q, k, v], dim=0)


def openclip_to_hf(state: dict[str, Tensor], prefix: str, num_layers: int) -> dict[str, Tensor]:
    """HF CLIPTextModel(WithProjection) state from the keys under `prefix` (layers >= num_layers skipped)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if rest in _TOP:
            out[_TOP[rest]] = value
        elif rest == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
        else:
            m = _RESBLOCK.match(rest)
            if not m or int(m.group(1)) >= num_layers:
                continue
            n, part = int(m.group(1)), m.group(2)
            base = f"text_model.encoder.layers.{n}."
            if part in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if part.endswith("weight") else "bias"
                q, k, v = split_in_proj(value)
                out[base + f"self_attn.q_proj.{kind}"] = q
                out[base + f"self_attn.k_proj.{kind}"] = k
                out[base + f"self_attn.v_proj.{kind}"] = v
            elif part in _LAYER_PARTS:
                out[base + _LAYER_PARTS[part]] = value
    return out


def openclip_unconverted(state: dict[str, Tensor], prefix: str, num_layers: int) -> dict[str, Tensor]:
    """Keys under `prefix` that openclip_to_hf does not carry (later layers, logit_scale, attn_mask…)."""
    carried = set(_TOP) | {"text_projection"}
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        m = _RESBLOCK.match(rest)
        if rest in carried:
            continue
        if m and int(m.group(1)) < num_layers and (
            m.group(2) in _LAYER_PARTS or m.group(2) in ("attn.in_proj_weight", "attn.in_proj_bias")
        ):
            continue
        out[key] = value
    return out


def hf_to_openclip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """OpenCLIP keys under `prefix` from an HF CLIPTextModel(WithProjection) state (q/k/v fused back)."""
    top = {v: k for k, v in _TOP.items()}
    parts = {v: k for k, v in _LAYER_PARTS.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key in top:
            out[prefix + top[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.t().contiguous()
        elif key == "text_model.embeddings.position_ids":
            continue  # a buffer HF may save; OpenCLIP has no such key
        else:
            m = _HF_LAYER.match(key)
            if not m:
                raise ValueError(f"{key}: not a CLIPTextModel key this converter knows")
            n, part = int(m.group(1)), m.group(2)
            pm = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", part)
            if pm:
                qkv.setdefault((n, pm.group(2)), {})[pm.group(1)] = value
            elif part in parts:
                out[f"{prefix}transformer.resblocks.{n}.{parts[part]}"] = value
            else:
                raise ValueError(f"{key}: not a CLIPTextModel key this converter knows")
    for (n, kind), d in sorted(qkv.items()):
        missing = [x for x in "qkv" if x not in d]
        if missing:
            raise ValueError(f"layer {n}: {kind} of {', '.join(missing)}_proj missing, cannot fuse in_proj")
        out[f"{prefix}transformer.resblocks.{n}.attn.in_proj_{kind}"] = fuse_in_proj(d["q"], d["k"], d["v"])
    return out


def openclip_source(hf_key: str) -> tuple[str, int | None, bool]:
    """Where one HF CLIPTextModel(WithProjection) key lives in OpenCLIP's layout, key by key.

    Returns (OpenCLIP key without the checkpoint prefix, index of q/k/v inside the fused
    `in_proj` or None, whether the stored tensor is the transpose). The same tables as
    openclip_to_hf / hf_to_openclip, for tools that read or rewrite one tensor at a time
    (the LoRA toolbox) instead of converting a whole state dict.
    """
    key = hf_key if hf_key.startswith(("text_model.", "text_projection.")) else "text_model." + hf_key
    top = {v: k for k, v in _TOP.items()}
    if key in top:
        return top[key], None, False
    if key == "text_projection.weight":
        return "text_projection", None, True
    m = _HF_LAYER.match(key)
    if m:
        n, part = int(m.group(1)), m.group(2)
        pm = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", part)
        if pm:
            return f"transformer.resblocks.{n}.attn.in_proj_{pm.group(2)}", "qkv".index(pm.group(1)), False
        parts = {v: k for k, v in _LAYER_PARTS.items()}
        if part in parts:
            return f"transformer.resblocks.{n}.{parts[part]}", None, False
    raise KeyError(f"{hf_key}: not a CLIPTextModel key with an OpenCLIP counterpart")
