"""The small-head attention path: same values and gradients as torch's SDPA, installed on the tiny UNet."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from library.models import build_tiny_bundle
from library.training.attention import (
    SmallHeadAttention,
    attention,
    install_lean_attention,
    uses_small_head_path,
)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    b, _, c = q.shape
    split = [x.view(b, -1, heads, c // heads).transpose(1, 2) for x in (q, k, v)]
    return F.scaled_dot_product_attention(*split).transpose(1, 2).reshape(b, -1, c)


def _qkv(length: int, context: int, channels: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, length, channels), (2, context, channels), (2, context, channels)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def test_gradients_match_finite_differences_in_float64():
    q, k, v = _qkv(6, 5, 8, torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: SmallHeadAttention.apply(a, b, c, 2), (q, k, v))


@pytest.mark.parametrize("chunk_probs,channels,heads,step", [
    (30, 8, 2, 1),  # 4 (batch, head) pairs of 6x5 -> chunks of 1
    (120, 10, 5, 4),  # 10 pairs -> chunks of 4, 4 and 2
])
def test_chunked_heads_give_the_same_gradients(monkeypatch, chunk_probs, channels, heads, step):
    import library.training.attention as attention_module

    monkeypatch.setattr(attention_module, "CHUNK_PROBS", chunk_probs)
    assert attention_module.heads_per_chunk(2 * heads, 6, 5) == step
    q, k, v = _qkv(6, 5, channels, torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, c: SmallHeadAttention.apply(a, b, c, heads), (q, k, v))


def _saved_bytes_and_grads(monkeypatch, chunk_probs: int):
    """Bytes the autograd graph keeps for backward, and the gradients, with chunks of `chunk_probs` elements."""
    import library.training.attention as attention_module

    monkeypatch.setattr(attention_module, "CHUNK_PROBS", chunk_probs)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    q, k, v = _qkv(256, 256, 32)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = SmallHeadAttention.apply(q, k, v, 8)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    return sum(storages.values()), grads


def test_several_chunks_recompute_probabilities_with_the_same_bits(monkeypatch):
    # 16 (batch, head) pairs of 256x256 probabilities = 4 MiB; q, k, v in heads-first layout = 3 x 64 KiB
    one_saved, one_grads = _saved_bytes_and_grads(monkeypatch, 16 * 256 * 256)
    many_saved, many_grads = _saved_bytes_and_grads(monkeypatch, 256 * 256)  # 16 chunks of one pair
    assert one_saved == 3 * 2 * 256 * 32 * 4 + 16 * 256 * 256 * 4  # one chunk keeps its probabilities
    assert many_saved == 3 * 2 * 256 * 32 * 4  # several chunks keep only q, k, v
    for a, b in zip(one_grads, many_grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("length,context,channels,heads", [(256, 256, 32, 8), (64, 77, 64, 8), (4, 4, 64, 8)])
def test_values_and_gradients_equal_sdpa(length, context, channels, heads):
    q, k, v = _qkv(length, context, channels)
    ours = SmallHeadAttention.apply(q, k, v, heads)
    ref = _sdpa(q, k, v, heads)
    assert ours.shape == ref.shape == (2, length, channels)
    assert (ours - ref).abs().max() < 1e-5
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(ours, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for mine, theirs in zip(grads, ref_grads):
        assert (mine - theirs).abs().max() < 2e-5


def test_wide_heads_and_long_sequences_stay_on_sdpa():
    q, k, _ = _qkv(16, 16, 320)
    assert not uses_small_head_path(q, k, heads=8)  # head width 40 (SD1.5)
    q, k, _ = _qkv(4096, 4096, 32)
    assert not uses_small_head_path(q, k, heads=8)  # 268M probabilities
    q, k, v = _qkv(16, 16, 320)
    assert torch.equal(attention(q, k, v, 8), _sdpa(q, k, v, 8))
    q, k, _ = _qkv(16, 16, 32, torch.bfloat16)
    assert not uses_small_head_path(q, k, heads=8)  # half precision: SDPA's float32 softmax


def test_short_sequences_take_sdpa_and_mid_length_ones_the_small_head_path():
    for length, context in ((4, 4), (16, 77)):
        q, k, v = _qkv(length, context, 64)
        assert not uses_small_head_path(q, k, heads=8)
        assert torch.equal(attention(q, k, v, 8), _sdpa(q, k, v, 8))
    for length, context in ((64, 64), (256, 77)):
        q, k, _ = _qkv(length, context, 32)
        assert uses_small_head_path(q, k, heads=8)


def test_installed_on_every_tiny_unet_attention_and_output_unchanged():
    bundle = build_tiny_bundle(0)
    g = torch.Generator().manual_seed(0)
    x, cond, t = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g), torch.tensor([10, 900])
    with torch.no_grad():
        before = bundle.unet(x, t, cond).sample
        assert install_lean_attention(bundle.unet) == 32  # 16 transformer blocks x (self, cross)
        after = bundle.unet(x, t, cond).sample
        assert install_lean_attention(bundle.unet) == 0  # already installed
    assert (before - after).abs().max() < 1e-5
