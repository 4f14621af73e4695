"""A leaner attention path for training small-headed UNets on the CPU.

Scaled dot-product attention (Vaswani et al. 2017, "Attention Is All You Need"):
    out = softmax(q k^T / sqrt(d)) v
For head widths of a few channels (the built-in tiny model: 4 and 8) the CPU's fused
SDPA kernel and BLAS products shaped (L x S) @ (S x d) are slow: a product whose
*output* has only d columns runs at a fraction of the speed of the same product
written with the d-row operand first. `SmallHeadAttention` computes every product
of the forward and backward pass in the fast orientation (d rows first), a chunk of
(batch, head) pairs at a time. When a call needs several chunks, the backward pass
recomputes each chunk's probabilities instead of keeping them from the forward pass (as
FlashAttention does, Dao et al. 2022): the same operations on the same inputs give the
same bits, and the step holds one chunk of probabilities instead of all of them (20 MB
less at the tiny model's peak, for about one softmax per chunk). A call that fits in one
chunk keeps its probabilities: they are small, and recomputing would cost a softmax.
Larger heads or long sequences (SD1.5) stay on torch's SDPA, and so do very short
sequences, where one fused call costs less than this path's small ops.

`install_lean_attention(unet)` gives every diffusers `Attention` of the model a
processor that takes this path when it applies, and a forward that skips diffusers'
per-call `inspect.signature` (a few microseconds each, 32 times a step).
"""
from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Heads at most this wide take the small-head path ...
SMALL_HEAD_MAX_DIM = 16
# ... when a call's probabilities (all heads) number at most this many elements ...
SMALL_HEAD_MAX_PROBS = 16 * 1024 * 1024
# ... and each head's score matrix has at least this many: for shorter sequences SDPA's one fused
# call beats this path's ~40 small ops (measured at batch 2, 8 heads: 16x77 tokens 0.28 vs 0.42 ms
# forward + backward, 4x4 0.10 vs 0.25; from 64x64 on this path wins, 0.37 vs 0.52).
SMALL_HEAD_MIN_SCORES = 2048
# Probabilities (elements) handled at once; 1 MB of float32 stays in a 1 MB L2 cache.
CHUNK_PROBS = 256 * 1024


def _heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, heads*d) -> (B*heads, d, L), contiguous."""
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).permute(0, 2, 3, 1).reshape(b * heads, c // heads, n)


def _tokens_first(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(B*heads, d, L) -> (B, L, heads*d): the inverse of `_heads_first`."""
    bh, d, n = x.shape
    heads = bh // batch
    return x.reshape(batch, heads, d, n).permute(0, 3, 1, 2).reshape(batch, n, heads * d)


def heads_per_chunk(heads_total: int, length: int, context: int) -> int:
    """How many (batch, head) pairs to process at once: all, unless their probabilities exceed
    `CHUNK_PROBS`; then chunks of about that size, which stay in the core's L2 cache between
    the product, the softmax and the next product (measured: 4.2 vs 5.4 ms for 16 heads of 256x256)."""
    if heads_total * length * context <= 2 * CHUNK_PROBS:
        return heads_total
    return max(1, CHUNK_PROBS // (length * context))


def _chunk_probs(q_rows: torch.Tensor, k_scaled: torch.Tensor, part: slice, scores: torch.Tensor,
                 probs: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale) of the (batch, head) pairs in `part`, written into `probs` (`scores` is scratch).

    The forward and the backward pass both call this, so the recomputed probabilities are the forward's bits.
    """
    n = part.stop - part.start
    torch.bmm(q_rows[part], k_scaled[part], out=scores[:n])
    return torch.ops.aten._softmax.out(scores[:n], -1, False, out=probs[:n])


def _score_operands(q_t: torch.Tensor, k_t: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q as (pairs, L, d) rows and k scaled, for `_chunk_probs`; forward and recompute share it (same bits)."""
    return q_t.transpose(1, 2).contiguous(), k_t * scale


def _chunks(pairs: int, step: int) -> list[slice]:
    return [slice(i, min(i + step, pairs)) for i in range(0, pairs, step)]


class SmallHeadAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v with every product oriented so the head width is its row count."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        batch = q.shape[0]
        scale = (q.shape[-1] // heads) ** -0.5
        q_t, k_t, v_t = _heads_first(q, heads), _heads_first(k, heads), _heads_first(v, heads)
        q_rows, k_scaled = _score_operands(q_t, k_t, scale)
        out_t = torch.empty_like(q_t)
        step = heads_per_chunk(q_t.shape[0], q_t.shape[2], k_t.shape[2])
        scores = q_t.new_empty(min(step, q_t.shape[0]), q_t.shape[2], k_t.shape[2])
        probs = torch.empty_like(scores)
        for part in _chunks(q_t.shape[0], step):
            p = _chunk_probs(q_rows, k_scaled, part, scores, probs)
            torch.bmm(v_t[part], p.transpose(1, 2), out=out_t[part])
        one_chunk = step >= q_t.shape[0]
        ctx.save_for_backward(q_t, k_t, v_t, *([probs] if one_chunk else []))
        ctx.scale, ctx.step = scale, step
        return _tokens_first(out_t, batch)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        q_t, k_t, v_t, *kept = ctx.saved_tensors
        batch, heads = grad.shape[0], q_t.shape[0] // grad.shape[0]
        g_t = _heads_first(grad, heads)
        g_rows = g_t.transpose(1, 2).contiguous()
        grad_q, grad_k, grad_v = torch.empty_like(q_t), torch.empty_like(k_t), torch.empty_like(v_t)
        chunk_shape = (min(ctx.step, q_t.shape[0]), q_t.shape[2], k_t.shape[2])
        grad_probs, grad_scores = q_t.new_empty(chunk_shape), q_t.new_empty(chunk_shape)
        if not kept:  # recompute each chunk's probabilities exactly as forward did
            q_rows, k_scaled = _score_operands(q_t, k_t, ctx.scale)
            scores, probs = q_t.new_empty(chunk_shape), q_t.new_empty(chunk_shape)
        for part in _chunks(q_t.shape[0], ctx.step):
            n = part.stop - part.start
            p = kept[0] if kept else _chunk_probs(q_rows, k_scaled, part, scores, probs)
            torch.bmm(g_t[part], p, out=grad_v[part])
            torch.bmm(g_rows[part], v_t[part], out=grad_probs[:n])
            ds = torch.ops.aten._softmax_backward_data.out(grad_probs[:n], p, -1, p.dtype, grad_input=grad_scores[:n])
            torch.bmm(k_t[part], ds.transpose(1, 2), out=grad_q[part])
            torch.bmm(q_t[part], ds, out=grad_k[part])
        grad_q.mul_(ctx.scale)
        grad_k.mul_(ctx.scale)
        return _tokens_first(grad_q, batch), _tokens_first(grad_k, batch), _tokens_first(grad_v, batch), None


def uses_small_head_path(q: torch.Tensor, k: torch.Tensor, heads: int) -> bool:
    """True for CPU float32 tensors with narrow heads and mid-length sequences (see the module docstring).

    Half precision stays on SDPA, which accumulates the softmax in float32.
    """
    head_dim = q.shape[-1] // heads
    scores = q.shape[1] * k.shape[1]
    return (q.device.type == "cpu" and q.dtype is torch.float32 and k.dtype is torch.float32
            and head_dim <= SMALL_HEAD_MAX_DIM and SMALL_HEAD_MIN_SCORES <= scores
            and q.shape[0] * heads * scores <= SMALL_HEAD_MAX_PROBS)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention on (B, L, heads*d) tensors, no mask, scale 1/sqrt(d)."""
    if uses_small_head_path(q, k, heads):
        return SmallHeadAttention.apply(q, k, v, heads)
    b, _, c = q.shape
    split = [x.view(b, -1, heads, c // heads).transpose(1, 2) for x in (q, k, v)]
    return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(b, -1, c)


def _is_plain(attn: nn.Module) -> bool:
    """An SD1.x-style attention layer: no norms, no residual, default scale, nothing this path would skip."""
    head_dim = attn.inner_dim // attn.heads if getattr(attn, "heads", 0) else 0
    return (
        head_dim > 0
        and attn.spatial_norm is None and attn.group_norm is None and attn.norm_q is None
        and attn.norm_k is None and not attn.norm_cross and not attn.residual_connection
        and attn.rescale_output_factor == 1.0 and attn.scale == head_dim ** -0.5
        and not getattr(attn, "is_cross_attention_processor_added_kv", False)
        and getattr(attn, "add_k_proj", None) is None
    )


class LeanAttnProcessor:
    """diffusers attention processor: the plain SD1.x layer through `attention`; anything else to `fallback`."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if attention_mask is not None or kwargs or hidden_states.ndim != 3:
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        out = attention(q, k, v, attn.heads)
        return attn.to_out[1](attn.to_out[0](out))


def _lean_forward(attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                  attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
    """Attention.forward without the per-call signature inspection (our processor takes any kwargs)."""
    return attn.processor(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask, **kwargs)


def install_lean_attention(model: nn.Module) -> int:
    """Give each plain diffusers Attention layer of `model` the lean processor; returns how many got it.

    Layers whose processor is not diffusers' default SDPA one (xformers, a user's own)
    are left alone.
    """
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    count = 0
    for module in model.modules():
        if isinstance(module, Attention) and type(module.processor) is AttnProcessor2_0 and _is_plain(module):
            module.set_processor(LeanAttnProcessor(module.processor))
            module.forward = functools.partial(_lean_forward, module)
            count += 1
    return count
