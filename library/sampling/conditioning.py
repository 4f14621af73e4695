"""Prompt text → weighted text-encoder conditioning, as A1111 builds it.

Each 77-token chunk from prompt_parser goes through the text encoder on its own
(clip skip as in library.data.text.encode_tokens); chunks are joined along the
token axis. Emphasis follows A1111's "Original" mode: multiply each token's
hidden state by its weight, then rescale the chunk so its mean equals the
unweighted mean. The mean is taken per prompt and chunk, so an image does not
depend on what else shares its batch.
"""
from __future__ import annotations

import torch

from library.data.text import encode_tokens
from library.sampling.prompt_parser import PromptChunk, tokenize_prompt


def apply_emphasis(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale token states (77, D) by their weights (77,), keeping the chunk's mean (A1111 "Original").

    When the states' mean is ~0 relative to their size (a freshly initialised encoder; its
    final LayerNorm centres every token) the rescale is a 0/0 and is skipped.
    """
    original_mean = z.mean()
    scaled = z * weights.to(z.dtype).unsqueeze(-1)
    new_mean = scaled.mean()
    tiny = 1e-4 * float(z.abs().mean())
    if abs(float(original_mean)) <= tiny or abs(float(new_mean)) <= tiny:
        return scaled
    return scaled * (original_mean / new_mean)


@torch.no_grad()
def encode_chunks(text_encoder: torch.nn.Module, chunks: list[PromptChunk], clip_skip: int | None) -> torch.Tensor:
    """Weighted conditioning (1, 77 * len(chunks), D) for one prompt's chunks."""
    ids = torch.tensor([c.tokens for c in chunks], dtype=torch.long)
    if any(c.fixes for c in chunks):  # textual-inversion vectors in their slots (library/sampling/embeddings.py)
        from library.sampling.embeddings import embedding_vectors

        with embedding_vectors(text_encoder, [c.fixes for c in chunks]):
            states = encode_tokens(text_encoder, ids, clip_skip).float().cpu()
    else:
        states = encode_tokens(text_encoder, ids, clip_skip).float().cpu()  # (n_chunks, 77, D)
    out = []
    for z, chunk in zip(states, chunks):
        weights = torch.tensor(chunk.weights, dtype=torch.float32)
        out.append(z if bool((weights == 1.0).all()) else apply_emphasis(z, weights))
    return torch.cat(out, dim=0).unsqueeze(0)


class PromptEncoder:
    """Encodes prompts with a per-(prompt, clip skip) cache.

    The cache must be cleared (`clear()`) whenever the text encoder's weights change,
    e.g. when a LoRA with text-encoder modules is applied or re-weighted.
    """

    def __init__(self, tokenizer, text_encoder: torch.nn.Module) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._cache: dict[tuple[str, int | None], torch.Tensor] = {}
        self.embeddings = None  # an EmbeddingDatabase (library/sampling/embeddings.py) or None

    def clear(self) -> None:
        self._cache.clear()

    def use_embeddings(self, embeddings) -> None:
        """Textual-inversion embeddings for the prompts encoded from now on (None: none)."""
        from library.sampling.embeddings import signature

        if signature(embeddings) != signature(self.embeddings):
            self.clear()
        self.embeddings = embeddings

    def encode(self, prompt: str, clip_skip: int | None) -> torch.Tensor:
        key = (prompt, clip_skip)
        if key not in self._cache:
            chunks = tokenize_prompt(self.tokenizer, prompt, self.embeddings)
            self._cache[key] = encode_chunks(self.text_encoder, chunks, clip_skip)
        return self._cache[key]

    def encode_batch(self, prompts: list[str], negatives: list[str], clip_skip: int | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond), each (B, 77 * k, D), shorter ones padded with the empty prompt's chunk."""
        conds = [self.encode(p, clip_skip) for p in prompts]
        unconds = [self.encode(n, clip_skip) for n in negatives]
        length = max(t.shape[1] for t in conds + unconds)
        empty = self.encode("", clip_skip)
        conds = [pad_chunks(t, length, empty) for t in conds]
        unconds = [pad_chunks(t, length, empty) for t in unconds]
        return torch.cat(conds), torch.cat(unconds)


def pad_chunks(z: torch.Tensor, length: int, empty_chunk: torch.Tensor) -> torch.Tensor:
    """Append copies of the empty prompt's 77-token chunk until z has `length` tokens (A1111's batch padding)."""
    missing = (length - z.shape[1]) // empty_chunk.shape[1]
    if missing <= 0:
        return z
    return torch.cat([z] + [empty_chunk] * missing, dim=1)
