"""DoRA: weight-decomposed low-rank adaptation, on top of any algorithm's delta.

Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation":
    W' = m * (W + dW) / ||W + dW||
with the magnitude m initialised to ||W|| and trained. In files (LyCORIS `dora_wd=True`)
m is the tensor `<name>.dora_scale`, stored broadcastable against the weight:
- current LyCORIS (`wd_on_output=True`, the default): one norm per output channel,
  shape (out, 1) for Linear, (out, 1, 1, 1) for Conv2d;
- older LyCORIS (`wd_on_output=False`): one per input channel, (1, in) / (1, in, 1, 1).
ComfyUI (and SD.Next) tell the two apart by shape, as we do; AUTOMATIC1111 1.10 reads only the
per-input layout (and applies alpha/rank after the renormalisation), so `wd_on_output=False`
files are the ones it merges as trained. dW already carries alpha/rank;
LyCORIS and ComfyUI add float eps to the norm. At strength s a loader applies
W + s * (W' - W) (ComfyUI's rule), so the weight change is linear in s for a
given file, but not in dW: scaling the adapter's up matrix does not scale the change.
"""
from __future__ import annotations

import torch

DORA_KEY = "dora_scale"


def column_norm(weight: torch.Tensor, on_output: bool) -> torch.Tensor:
    """Per-output (or per-input) L2 norm of a weight, shaped to broadcast against it."""
    rest = [1] * (weight.dim() - 1)
    if on_output:
        return weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(weight.shape[0], *rest)
    per_in = weight.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
    return per_in.reshape(weight.shape[1], *rest).transpose(0, 1)


def magnitude_of(weight: torch.Tensor, on_output: bool = True) -> torch.Tensor:
    """DoRA's initial magnitude: the norm of the base weight, in LyCORIS' dora_scale layout (float32)."""
    return column_norm(weight.float(), on_output).contiguous()


def is_on_output(magnitude: torch.Tensor, weight_shape: tuple[int, ...]) -> bool:
    """Which axis a dora_scale tensor normalises (ComfyUI's rule: output unless it is (1, in, ...))."""
    if magnitude.dim() >= 2:
        return magnitude.shape[0] == weight_shape[0] and all(d == 1 for d in magnitude.shape[1:])
    return magnitude.shape[0] == weight_shape[0] and (len(weight_shape) < 2 or weight_shape[0] != weight_shape[1])


def dora_weight(weight: torch.Tensor, delta: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """W' = m * (W + dW) / (||W + dW|| + eps) (Liu et al. 2024), the norm on m's axis."""
    merged = weight + delta
    on_output = is_on_output(magnitude, tuple(weight.shape))
    norm = column_norm(merged, on_output) + torch.finfo(merged.dtype).eps
    return merged * (magnitude.reshape(norm.shape) / norm)
