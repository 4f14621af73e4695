"""Text conditioning for SD2.x and SDXL, as A1111 builds it (and diffusers, for plain prompts).

SD2.x (one OpenCLIP-H encoder). A1111's FrozenOpenCLIPEmbedderWithCustomWords chunks a prompt
exactly as for SD1 (75 tokens, BREAK, emphasis) but pads with id 0 instead of the end token:
every position after a chunk's first end token becomes 0 (`process_tokens`, "SD2 uses different
ones"). diffusers' SD2 tokenizer pads with "!" (id 0) the same way. The hidden states are the
converted encoder's `last_hidden_state` (its penultimate OpenCLIP layer through the final
LayerNorm), i.e. the SD1 path with that padding.

SDXL (CLIP ViT-L + OpenCLIP ViT-bigG). A1111 runs each encoder on the same chunks:
  - te1: hidden_states[-2] (penultimate layer, no final LayerNorm), padded with the end token;
  - te2: hidden_states[-2] (penultimate, no final LayerNorm), padded with 0 after the end token;
  - emphasis ("Original": multiply by weights, restore the chunk's mean) on each encoder's states
    separately, then the two are concatenated along the feature axis (sgm's GeneralConditioner);
  - pooled: te2's projected end-token state (`text_embeds`) of the *first* chunk, unweighted
    (A1111 returns `zs[0].pooled`; diffusers `pooled_prompt_embeds` of its single chunk).
An empty negative prompt is all zeros, hidden and pooled (A1111 `force_zero_negative_prompt`,
diffusers `force_zeros_for_empty_prompt`); A1111 decides this per batch (all negatives empty),
we per image, so an image never depends on its batch mates. Size/crop ids are added by the denoiser from the
latent's size: original = target = (height, width), crop (0, 0) (A1111's sdxl_crop defaults,
diffusers' defaults). Clip skip does not apply to SDXL (A1111 ignores it unless its
`sdxl_clip_l_skip` option is set; diffusers' default).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from library.sampling.conditioning import (
    PromptEncoder,
    apply_emphasis,
    encode_chunks,
    pad_chunks,
)
from library.sampling.prompt_parser import PromptChunk, tokenize_prompt


def pad_after_end(tokens: list[int], end_id: int, pad_id: int) -> list[int]:
    """A1111's OpenCLIP padding: every position after the first end token becomes `pad_id`."""
    if end_id == pad_id or end_id not in tokens:
        return list(tokens)
    cut = tokens.index(end_id) + 1
    return list(tokens[:cut]) + [pad_id] * (len(tokens) - cut)


def repad_chunks(chunks: list[PromptChunk], end_id: int, pad_id: int) -> list[PromptChunk]:
    """The chunks with OpenCLIP padding; every other field (weights, embedding slots) kept."""
    return [dataclasses.replace(c, tokens=pad_after_end(c.tokens, end_id, pad_id)) for c in chunks]


@dataclass
class SDXLCond:
    """SDXL conditioning for a batch: token states (B, 77k, D1+D2) and te2's pooled embedding (B, P).

    The size/crop ids are not stored: the denoiser derives them from the latent it denoises,
    so a hires pass gets its own size as A1111's hr conditioning does.
    """

    hidden: torch.Tensor
    pooled: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.hidden.shape

    def to(self, *args, **kwargs) -> SDXLCond:
        return SDXLCond(self.hidden.to(*args, **kwargs), self.pooled.to(*args, **kwargs))

    @staticmethod
    def cat(items: list[SDXLCond]) -> SDXLCond:
        return SDXLCond(torch.cat([c.hidden for c in items]), torch.cat([c.pooled for c in items]))


def cat_conditioning(items: list) -> object:
    """torch.cat for plain tensors, SDXLCond.cat for SDXL conditioning (what CFG batches)."""
    if isinstance(items[0], SDXLCond):
        return SDXLCond.cat(items)
    return torch.cat(items)


def sdxl_time_ids(height: int, width: int, batch: int, crop_top: int = 0, crop_left: int = 0,
                  dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """SDXL's micro-conditioning (B, 6): original (h, w), crop (top, left), target (h, w) (Podell et al. 2023)."""
    row = torch.tensor([height, width, crop_top, crop_left, height, width], dtype=dtype, device=device)
    return row.expand(batch, 6)


def sdxl_unet_kwargs(cond: SDXLCond, latent: torch.Tensor, dtype: torch.dtype) -> dict:
    """UNet keyword arguments for SDXL conditioning at this latent's pixel size (VAE factor 8)."""
    height, width = latent.shape[-2] * 8, latent.shape[-1] * 8
    time_ids = sdxl_time_ids(height, width, latent.shape[0], dtype=dtype, device=latent.device)
    return {"encoder_hidden_states": cond.hidden.to(dtype),
            "added_cond_kwargs": {"text_embeds": cond.pooled.to(dtype), "time_ids": time_ids}}


class OpenCLIPPromptEncoder(PromptEncoder):
    """SD2.x: the SD1 encoder with A1111's OpenCLIP padding (0 after the end token)."""

    def encode(self, prompt: str, clip_skip: int | None) -> torch.Tensor:
        key = (prompt, clip_skip)
        if key not in self._cache:
            # textual-inversion embeddings, where the encoder has them (library/sampling/embeddings.py)
            embeddings = getattr(self, "embeddings", None)
            chunks = tokenize_prompt(self.tokenizer, prompt, *(() if embeddings is None else (embeddings,)))
            chunks = repad_chunks(chunks, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
            self._cache[key] = encode_chunks(self.text_encoder, chunks, clip_skip)
        return self._cache[key]


@torch.no_grad()
def encode_penultimate(text_encoder: torch.nn.Module, chunks: list[PromptChunk], embedding_key: str | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weighted penultimate states (77k, D), projected pooled state of the first chunk or None).

    Textual-inversion slots (`chunk.fixes`) get the SDXL file's `embedding_key` vectors (clip_l / clip_g).
    """
    device = next(text_encoder.parameters()).device
    ids = torch.tensor([c.tokens for c in chunks], dtype=torch.long, device=device)
    fixes = [getattr(c, "fixes", None) or [] for c in chunks]
    if any(fixes):
        from library.sampling.embeddings import embedding_vectors

        with embedding_vectors(text_encoder, fixes, embedding_key):
            out = text_encoder(ids, output_hidden_states=True, return_dict=True)
    else:
        out = text_encoder(ids, output_hidden_states=True, return_dict=True)
    states = out.hidden_states[-2].float().cpu()
    pooled = getattr(out, "text_embeds", None)
    weighted = []
    for z, chunk in zip(states, chunks):
        weights = torch.tensor(chunk.weights, dtype=torch.float32)
        weighted.append(z if bool((weights == 1.0).all()) else apply_emphasis(z, weights))
    return torch.cat(weighted), (pooled[0].float().cpu() if pooled is not None else None)


class SDXLPromptEncoder:
    """Prompts → SDXLCond with both encoders; cached per prompt (clear() when a LoRA changes them)."""

    def __init__(self, tokenizer, text_encoder: torch.nn.Module, tokenizer_2, text_encoder_2: torch.nn.Module) -> None:
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.tokenizer_2, self.text_encoder_2 = tokenizer_2, text_encoder_2
        self._cache: dict[str, SDXLCond] = {}
        self.embeddings = None  # an EmbeddingDatabase (library/sampling/embeddings.py) or None

    def clear(self) -> None:
        self._cache.clear()

    def use_embeddings(self, embeddings) -> None:
        """Textual-inversion embeddings (SDXL's clip_l + clip_g files) for prompts encoded from now on."""
        from library.sampling.embeddings import signature

        if signature(embeddings) != signature(self.embeddings):
            self.clear()
        self.embeddings = embeddings

    def encode(self, prompt: str, clip_skip: int | None = None) -> SDXLCond:
        """(1, 77k, D1+D2) states and (1, P) pooled; clip_skip is ignored, as in A1111 for SDXL."""
        if prompt not in self._cache:
            extra = () if self.embeddings is None else (self.embeddings,)
            chunks = tokenize_prompt(self.tokenizer, prompt, *extra)
            z1, _ = encode_penultimate(self.text_encoder, chunks, "clip_l")
            t2 = self.tokenizer_2
            z2, pooled = encode_penultimate(self.text_encoder_2, repad_chunks(chunks, t2.eos_token_id,
                                                                              t2.pad_token_id), "clip_g")
            self._cache[prompt] = SDXLCond(torch.cat([z1, z2], dim=-1).unsqueeze(0), pooled.unsqueeze(0))
        return self._cache[prompt]

    def encode_batch(self, prompts: list[str], negatives: list[str], clip_skip: int | None = None
                     ) -> tuple[SDXLCond, SDXLCond]:
        """(cond, uncond); an empty negative is zeros; shorter prompts padded with the empty prompt's chunk."""
        conds = [self.encode(p) for p in prompts]
        unconds = [self._zeros() if n == "" else self.encode(n) for n in negatives]
        length = max(c.hidden.shape[1] for c in conds + unconds)
        empty = self.encode("").hidden
        padded = [SDXLCond(pad_chunks(c.hidden, length, empty), c.pooled) for c in conds + unconds]
        return SDXLCond.cat(padded[:len(conds)]), SDXLCond.cat(padded[len(conds):])

    def _zeros(self) -> SDXLCond:
        empty = self.encode("")
        return SDXLCond(torch.zeros_like(empty.hidden), torch.zeros_like(empty.pooled))


def make_prompt_encoder(bundle) -> PromptEncoder | SDXLPromptEncoder:
    """The prompt encoder for a bundle's family: SDXL's two encoders, OpenCLIP padding, or SD1's."""
    if getattr(bundle, "text_encoder_2", None) is not None:
        return SDXLPromptEncoder(bundle.tokenizer, bundle.text_encoder, bundle.tokenizer_2, bundle.text_encoder_2)
    tok = bundle.tokenizer
    if tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
        return OpenCLIPPromptEncoder(tok, bundle.text_encoder)
    return PromptEncoder(tok, bundle.text_encoder)
