"""Block-wise ranks and learning rates, by sd-scripts' networks/lora.py names and rules.

SD1.x has 25 UNet blocks: IN00-IN11 (index 0-11), MID (12), OUT00-OUT11 (13-24).
sd-scripts' `get_block_index` maps a Kohya module name to its block:
`(down|up)_blocks_<i>_(resnets|attentions)_<j>_` -> 3*i + j, `..._(down|up)samplers_` -> 3*i + 2,
then down blocks + 1 (IN00 is conv_in, which has no LoRA there), up blocks + 13, `mid_block_` -> 12,
anything else (conv_in, conv_out, time embedding, text encoder) -> -1.

network_args: `block_dims`, `block_alphas`, `conv_block_dims`, `conv_block_alphas` (25 values
each), `down_lr_weight` / `up_lr_weight` (12 values, or a preset `cosine`, `sine`, `linear`,
`reverse_linear`, `zeros`, optionally `+number` added to each), `mid_lr_weight` (one value),
`block_lr_zero_threshold` (weights at or below it become 0; a block whose weight is 0 gets
no LoRA at all).
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

NUM_BLOCKS = 12  # per side, sd-scripts' LoRANetwork.NUM_OF_BLOCKS
NUM_TOTAL = 2 * NUM_BLOCKS + 1  # 25
MID = NUM_BLOCKS
LR_PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")
_UPDOWN_RE = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def block_index(name: str) -> int:
    """sd-scripts' get_block_index for a Kohya module name (-1: outside the 25 blocks)."""
    match = _UPDOWN_RE.search(name)
    if match:
        side, i, kind, j = match.group(1), int(match.group(2)), match.group(3), int(match.group(4))
        idx = 3 * i + 2 if kind in ("upsamplers", "downsamplers") else 3 * i + j
        return 1 + idx if side == "down" else NUM_BLOCKS + 1 + idx
    return MID if "mid_block_" in name else -1


def block_label(idx: int) -> str:
    """IN00..IN11, MID, OUT00..OUT11 (the names kohya_ss and the block-weight extensions use)."""
    if idx < 0:
        return "other"
    if idx < NUM_BLOCKS:
        return f"IN{idx:02d}"
    return "MID" if idx == MID else f"OUT{idx - NUM_BLOCKS - 1:02d}"


def lr_preset(spec: str) -> list[float]:
    """12 weights from a named preset with an optional `+base` (sd-scripts' get_list)."""
    name, _, base_text = spec.partition("+")
    base = float(base_text) if base_text else 0.0
    n = NUM_BLOCKS
    if name == "cosine":
        return [math.sin(math.pi * (i / (n - 1)) / 2) + base for i in reversed(range(n))]
    if name == "sine":
        return [math.sin(math.pi * (i / (n - 1)) / 2) + base for i in range(n)]
    if name == "linear":
        return [i / (n - 1) + base for i in range(n)]
    if name == "reverse_linear":
        return [i / (n - 1) + base for i in reversed(range(n))]
    if name == "zeros":
        return [0.0 + base] * n
    raise ValueError(f"{spec!r} is neither 12 comma-separated numbers nor a preset ({', '.join(LR_PRESETS)}, +number)")


def _side_weights(text: str | None) -> list[float] | None:
    """down/up_lr_weight: a list (empty entries 0, padded with 1 to 12, cut at 12) or a preset."""
    if text is None:
        return None
    if "," not in text:
        return lr_preset(text.strip())
    values = [float(v) if v.strip() else 0.0 for v in text.split(",")]
    return (values + [1.0] * NUM_BLOCKS)[:NUM_BLOCKS]


def block_lr_weights(args: Mapping[str, str]) -> list[float] | None:
    """25 lr factors (IN00..OUT11) from down/mid/up_lr_weight, or None when none is given."""
    down, up = _side_weights(args.get("down_lr_weight")), _side_weights(args.get("up_lr_weight"))
    mid = float(args["mid_lr_weight"]) if args.get("mid_lr_weight") not in (None, "") else None
    if down is None and up is None and mid is None:
        return None
    threshold = float(args.get("block_lr_zero_threshold") or 0.0)
    weights = (down or [1.0] * NUM_BLOCKS) + [1.0 if mid is None else mid] + (up or [1.0] * NUM_BLOCKS)
    given = [down is not None] * NUM_BLOCKS + [mid is not None] + [up is not None] * NUM_BLOCKS
    return [w if not g or w > threshold else 0.0 for w, g in zip(weights, given)]


def _numbers(args: Mapping[str, str], key: str, kind: type) -> list[Any] | None:
    text = args.get(key)
    if text in (None, ""):
        return None
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise ValueError(f"{key}={text!r}: {NUM_TOTAL} comma-separated {what} expected") from None
    if len(values) != NUM_TOTAL:
        raise ValueError(f"{key} has {len(values)} values; it needs {NUM_TOTAL} (IN00-IN11, MID, OUT00-OUT11)")
    return values


def block_ranks_check(args: Mapping[str, str]) -> None:
    """ValueError when a block_dims-like list does not have 25 numbers."""
    kinds = (("block_dims", int), ("block_alphas", float), ("conv_block_dims", int), ("conv_block_alphas", float))
    for key, kind in kinds:
        _numbers(args, key, kind)


def block_ranks(args: Mapping[str, str], rank: int, alpha: float, conv_dim: int | None,
                conv_alpha: float | None, lr_weights: list[float] | None):
    """A `(target, rank, alpha) -> (rank, alpha)` rule for LoRANetwork.create, or None.

    sd-scripts: without block_dims every block has network_dim/alpha; conv blocks follow
    conv_block_dims, else conv_dim; blocks whose lr weight is 0 get rank 0 (no LoRA).
    """
    dims, alphas = _numbers(args, "block_dims", int), _numbers(args, "block_alphas", float)
    conv_dims, conv_alphas = _numbers(args, "conv_block_dims", int), _numbers(args, "conv_block_alphas", float)
    if dims is None and lr_weights is None and conv_dims is None:
        return None
    dims = dims or [rank] * NUM_TOTAL
    alphas = alphas or [alpha] * NUM_TOTAL
    if conv_dims is None and conv_dim:
        conv_dims, conv_alphas = [conv_dim] * NUM_TOTAL, [conv_alpha] * NUM_TOTAL
    conv_alphas = conv_alphas or [1.0 if conv_alpha is None else conv_alpha] * NUM_TOTAL

    def rule(target: Any, r: int | None, a: float | None) -> tuple[int | None, float | None]:
        idx = block_index(target.name)
        if target.component != "unet" or idx < 0:
            return r, a
        if lr_weights is not None and lr_weights[idx] == 0:
            return 0, a
        if target.kind != "conv":
            return dims[idx], alphas[idx]
        return (conv_dims[idx], conv_alphas[idx]) if conv_dims is not None else (0, a)

    rule.conv = conv_dims is not None  # ResnetBlock2D & co. are targets only with conv ranks (sd-scripts)
    return rule
