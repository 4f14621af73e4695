"""Small convolutions on the CPU take the im2col + GEMM kernel instead of oneDNN.

PyTorch sends every float32 CPU convolution to oneDNN (mkldnn). For the small
convolutions of the built-in tiny model (tens of channels, 16x16 latents or less,
a few million multiply-adds) oneDNN's reorders cost more than the arithmetic, and with
two threads it gets slower still. On a 2-core CPU with two threads, forward plus input
gradient of the stride-2 32->32 3x3 convolution at 2x16x16 takes 0.35 ms in oneDNN and
0.20 ms in the direct kernel, a 1x1 one 0.20 vs 0.08 ms (`python bench/conv_paths.py`);
the tiny model's whole training step gets 14% faster (in-process A/B, 2 threads).
Wide convolutions on small grids gain too: SD1.5's 1280-channel layers at 8x8 and 4x4
(256 px) take 12-24 ms instead of 30-57 ms forward, and its 256 px step drops from
5.1 to 3.9 s.

The direct kernel (`thnn_conv2d`: unfold, then one matrix product) is what PyTorch
itself runs when oneDNN is switched off, so each convolution gives exactly the bits of
`torch.backends.mkldnn.flags(enabled=False)`; it has its own backward, so the gradient
takes the same path.

`install_small_conv_path(model)` gives each plain Conv2d of `model` a `_conv_forward`
that makes this choice per call from the call's size; larger convolutions (SD1.5's
high-resolution levels) keep PyTorch's choice. LoRA hosts call the base layer's
`_conv_forward` with the folded weight, so they follow the same rule.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

# Convolutions of at most this many multiply-adds per call take the direct kernel (measured on a
# 2-core AVX-512 CPU with two threads: it wins or ties up to ~5M and loses at ~9M; with one
# thread the two paths are even overall).
SMALL_CONV_MAX_MACS = 6 * 1024 * 1024
# ... and so do convolutions with at most this many output positions per image, whatever their
# channels: SD1.5's 1280-channel layers at 8x8 and 4x4 (256 px) run 2-4x faster there.
SMALL_CONV_MAX_POSITIONS = 64


def conv_macs(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> int:
    """Multiply-adds of a 2-D convolution, from the input size (padding ignored: an estimate for a threshold)."""
    per_output = weight[0].numel()
    return x.numel() // x.shape[-3] * weight.shape[0] * per_output // (stride[0] * stride[1])


def output_positions(x: torch.Tensor, stride: tuple[int, int]) -> int:
    """Output height x width of one image (same-size padding assumed, as in UNets)."""
    return -(-x.shape[-2] // stride[0]) * -(-x.shape[-1] // stride[1])


def takes_direct_path(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True for small float32 CPU convolutions the direct kernel computes (no groups, dilation or padding modes)."""
    return (x.device.type == "cpu" and x.dtype is torch.float32 and weight.dtype is torch.float32
            and x.dim() == 4 and conv.groups == 1 and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and (output_positions(x, conv.stride) <= SMALL_CONV_MAX_POSITIONS
                 or conv_macs(x, weight, conv.stride) <= SMALL_CONV_MAX_MACS))


def _conv_forward(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if takes_direct_path(conv, x, weight):
        return torch._C._nn.thnn_conv2d(x, weight, conv.kernel_size, bias, conv.stride, conv.padding)
    return nn.Conv2d._conv_forward(conv, x, weight, bias)


def install_small_conv_path(model: nn.Module) -> int:
    """Route the small convolutions of `model`'s plain Conv2d layers to the direct kernel; returns how many layers."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Conv2d and "_conv_forward" not in module.__dict__:
            module._conv_forward = functools.partial(_conv_forward, module)  # type: ignore[method-assign]
            count += 1
    return count
