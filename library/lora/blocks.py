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

SDXL (sd-scripts' `is_sdxl` branch) has 23 blocks over the SGM names: 0 = `time_embed_` /
`label_emb_`, 1-9 = `input_blocks_<n>_` (1 + n), 10-12 = `middle_block_<n>_` (10 + n),
13-21 = `output_blocks_<n>_` (13 + n), 22 = `out_`; block_dims & co. take 23 values,
down/up_lr_weight 9 (presets over 9), mid_lr_weight up to 3, and blocks 0 and 22 keep lr 1.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

NUM_BLOCKS = 12  # per side, sd-scripts' LoRANetwork.NUM_OF_BLOCKS
NUM_TOTAL = 2 * NUM_BLOCKS + 1  # 25
MID = NUM_BLOCKS
SDXL_BLOCKS = 9  # per side, sd-scripts' SDXL_NUM_OF_BLOCKS
SDXL_MID = 3  # SDXL_NUM_OF_MID_BLOCKS
SDXL_TOTAL = 1 + 2 * SDXL_BLOCKS + SDXL_MID + 1  # 23
LR_PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")
_UPDOWN_RE = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def is_sdxl_names(names: Any) -> bool:
    """SGM UNet names (input_blocks / output_blocks) mean SDXL, as sd-scripts decides it for block lrs."""
    return any("input_blocks" in n or "output_blocks" in n for n in names)


def sdxl_block_index(name: str) -> int:
    """sd-scripts' get_block_index for SDXL names (-1: not a UNet module)."""
    if not name.startswith("lora_unet_"):
        return -1
    rest = name[len("lora_unet_"):]
    if rest.startswith(("time_embed_", "label_emb_")):
        return 0
    for prefix, base in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
        if rest.startswith(prefix):
            return base + int(rest.split("_")[2])
    return SDXL_TOTAL - 1 if rest.startswith("out_") else -1


def block_index(name: str, sdxl: bool = False) -> int:
    """sd-scripts' get_block_index for a Kohya module name (-1: outside the 25, or SDXL's 23, blocks)."""
    if sdxl:
        return sdxl_block_index(name)
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


def lr_preset(spec: str, n: int = NUM_BLOCKS) -> list[float]:
    """n (12; SDXL 9) weights from a named preset with an optional `+base` (sd-scripts' get_list)."""
    name, _, base_text = spec.partition("+")
    base = float(base_text) if base_text else 0.0
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
    raise ValueError(f"{spec!r} is neither {n} comma-separated numbers nor a preset ({', '.join(LR_PRESETS)}, +number)")


def _padded(text: str, n: int) -> list[float]:
    """A comma list (empty entries 0) padded with 1 to n, cut at n (sd-scripts)."""
    values = [float(v) if v.strip() else 0.0 for v in text.split(",")]
    return (values + [1.0] * n)[:n]


def _side_weights(text: str | None, n: int = NUM_BLOCKS) -> list[float] | None:
    """down/up_lr_weight: a list (empty entries 0, padded with 1 to n, cut at n) or a preset."""
    if text is None:
        return None
    if "," not in text:
        return lr_preset(text.strip(), n)
    return _padded(text, n)


def block_lr_weights(args: Mapping[str, str], sdxl: bool = False) -> list[float] | None:
    """25 lr factors (IN00..OUT11), SDXL 23, from down/mid/up_lr_weight, or None when none is given."""
    side = SDXL_BLOCKS if sdxl else NUM_BLOCKS
    down, up = _side_weights(args.get("down_lr_weight"), side), _side_weights(args.get("up_lr_weight"), side)
    mid_text = args.get("mid_lr_weight")
    if down is None and up is None and mid_text in (None, ""):
        return None
    n_mid = SDXL_MID if sdxl else 1
    mid = _padded(str(mid_text), n_mid) if mid_text not in (None, "") else None
    threshold = float(args.get("block_lr_zero_threshold") or 0.0)
    weights = (down or [1.0] * side) + (mid or [1.0] * n_mid) + (up or [1.0] * side)
    given = [down is not None] * side + [mid is not None] * n_mid + [up is not None] * side
    kept = [w if not g or w > threshold else 0.0 for w, g in zip(weights, given)]
    return [1.0] + kept + [1.0] if sdxl else kept  # SDXL: time/label embedding and `out` stay at 1


def _numbers(args: Mapping[str, str], key: str, kind: type, total: int | None = NUM_TOTAL) -> list[Any] | None:
    """The comma list under `key`; `total` None accepts SD1's 25 or SDXL's 23 (checked against the model later)."""
    text = args.get(key)
    if text in (None, ""):
        return None
    allowed = (NUM_TOTAL, SDXL_TOTAL) if total is None else (total,)
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise ValueError(f"{key}={text!r}: {' or '.join(map(str, allowed))} comma-separated {what} expected") from None
    if len(values) not in allowed:
        layout = "IN00-IN11, MID, OUT00-OUT11" if total == NUM_TOTAL else (
            "SDXL: embeddings, input_blocks 0-8, middle_block 0-2, output_blocks 0-8, out" if total == SDXL_TOTAL
            else "25 for SD1.x/SD2.x, 23 for SDXL")
        raise ValueError(f"{key} has {len(values)} values; it needs {' or '.join(map(str, allowed))} ({layout})")
    return values


def block_ranks_check(args: Mapping[str, str]) -> None:
    """ValueError when a block_dims-like list has neither 25 (SD1.x/SD2.x) nor 23 (SDXL) numbers."""
    kinds = (("block_dims", int), ("block_alphas", float), ("conv_block_dims", int), ("conv_block_alphas", float))
    for key, kind in kinds:
        _numbers(args, key, kind, None)


def block_ranks(args: Mapping[str, str], rank: int, alpha: float, conv_dim: int | None,
                conv_alpha: float | None, lr_weights: list[float] | None, sdxl: bool = False):
    """A `(target, rank, alpha) -> (rank, alpha)` rule for LoRANetwork.create, or None.

    sd-scripts: without block_dims every block has network_dim/alpha; conv blocks follow
    conv_block_dims, else conv_dim; blocks whose lr weight is 0 get rank 0 (no LoRA).
    """
    total = SDXL_TOTAL if sdxl else NUM_TOTAL
    dims, alphas = _numbers(args, "block_dims", int, total), _numbers(args, "block_alphas", float, total)
    conv_dims = _numbers(args, "conv_block_dims", int, total)
    conv_alphas = _numbers(args, "conv_block_alphas", float, total)
    if dims is None and lr_weights is None and conv_dims is None:
        return None
    dims = dims or [rank] * total
    alphas = alphas or [alpha] * total
    if conv_dims is None and conv_dim:
        conv_dims, conv_alphas = [conv_dim] * total, [conv_alpha] * total
    conv_alphas = conv_alphas or [1.0 if conv_alpha is None else conv_alpha] * total

    def rule(target: Any, r: int | None, a: float | None) -> tuple[int | None, float | None]:
        idx = block_index(target.name, sdxl)
        if target.component != "unet" or idx < 0:
            return r, a
        if lr_weights is not None and lr_weights[idx] == 0:
            return 0, a
        if target.kind != "conv":
            return dims[idx], alphas[idx]
        return (conv_dims[idx], conv_alphas[idx]) if conv_dims is not None else (0, a)

    rule.conv = conv_dims is not None  # ResnetBlock2D & co. are targets only with conv ranks (sd-scripts)
    return rule
