"""--fp8_base: frozen base weights stored as float8 (e4m3fn) and upcast one layer at a time.

sd-scripts' flag stores the UNet and text encoder in float8_e4m3fn and relies on autocast
to upcast each weight as it is used. Here every Linear and Conv2d weight of the frozen
model is kept in float8 and a layer's forward upcasts it to the compute dtype (autocast's
dtype, else the input's) just for that call. The backward pass needs only the gradient
with respect to the layer's input, so the layer saves its float8 weight, not an upcast
copy: a step holds one upcast weight at a time instead of the whole model in bf16.
Norms, biases and embeddings keep the training dtype (they are a small share of the
bytes). LoRA parameters and their math are unchanged: hosts whose base weight is
float8 add the adapters' output to the base output (`LoRAHost` folds adapters into the
weight only for float32 weights).
"""
from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value; larger weights are clamped, not turned into NaN


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a layer computes in: autocast's when it is on for x's device, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class Fp8Linear(torch.autograd.Function):
    """y = x W^T + b with W stored in float8; the backward upcasts W again instead of keeping a copy."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        dtype = compute_dtype(x)
        ctx.save_for_backward(weight)
        ctx.dtypes = (x.dtype, dtype)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (weight,) = ctx.saved_tensors
        x_dtype, dtype = ctx.dtypes
        grad_x = grad.to(dtype) @ weight.to(dtype) if ctx.needs_input_grad[0] else None
        return (None if grad_x is None else grad_x.to(x_dtype)), None, None


class Fp8Conv2d(torch.autograd.Function):
    """conv2d with the kernel stored in float8, for zero-padded convolutions with numeric padding."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: nn.Conv2d) -> torch.Tensor:
        dtype = compute_dtype(x)
        ctx.save_for_backward(weight)
        ctx.dtypes, ctx.conv, ctx.x_shape = (x.dtype, dtype), conv, x.shape
        with torch.autocast(x.device.type, enabled=False):
            return F.conv2d(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                            conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (weight,) = ctx.saved_tensors
        x_dtype, dtype = ctx.dtypes
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        c = ctx.conv
        grad_x = torch.nn.grad.conv2d_input(ctx.x_shape, weight.to(dtype), grad.to(dtype), c.stride, c.padding,
                                            c.dilation, c.groups)
        return grad_x.to(x_dtype), None, None, None


def _linear_forward(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return Fp8Linear.apply(x, layer.weight, layer.bias)


def _conv_forward(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return Fp8Conv2d.apply(x, layer.weight, layer.bias, layer)


def _convertible(module: nn.Module) -> bool:
    if "forward" in module.__dict__ or module.weight.requires_grad:
        return False  # already converted, or trained (fp8 is for frozen weights only)
    if type(module) is nn.Linear:
        return True
    return (type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def store_fp8(model: nn.Module) -> int:
    """Store the frozen Linear and Conv2d weights of `model` in float8 e4m3fn; returns how many layers.

    Call before LoRA hosts wrap the layers (their base layers then carry the fp8 forward).
    """
    count = 0
    for module in list(model.modules()):
        if type(module) not in (nn.Linear, nn.Conv2d) or not _convertible(module):
            continue
        module.weight.data = module.weight.data.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        forward = _linear_forward if type(module) is nn.Linear else _conv_forward
        module.forward = functools.partial(forward, module)  # type: ignore[method-assign]
        count += 1
    return count


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers of `model` as stored."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
