"""What the UNet is conditioned on, per model family, as sd-scripts computes it for training.

Used by the trainer (library.training.step) and by the epoch scorer (library.scoring.scores),
which must condition exactly as training did; it sits here, below both (the scorer may not
import library.training).

SD1.x / SD2.x: one text encoder's hidden states (library.data.text.encode_tokens; SD2's
diffusers text encoder already stops one layer early, so its last layer is SD2's
"penultimate").

SDXL (sd-scripts `SdxlTextEncodingStrategy`, Podell et al. 2023 §2.1): the *penultimate*
hidden states of both encoders — CLIP ViT-L (`hidden_states[11]` of 13 on the real model)
and OpenCLIP ViT-bigG (`hidden_states[-2]`), neither passed through the final layer norm —
concatenated on the feature axis (768 + 1280 = 2048 wide); the pooled embedding is
te2's `text_projection` of its final (layer-normed) state at the first EOS token (sd-scripts'
`_pool_workaround`); with 150/225-token captions the windows are joined as for SD1 and the
pooled embedding is the first window's. Added conditioning: `text_embeds` = pooled,
`time_ids` = the six size/crop numbers of each image (library.data.sdxl_size_ids).

Text-encoder outputs can be cached (`TextCache`) by caption; SDXL's also on disk beside each
image as `<stem>_te_outputs.npz` with sd-scripts' array names `hidden_state1`,
`hidden_state2`, `pool2` (plus the caption they encode, checked before reuse).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from library.data.sdxl_size_ids import size_crop_ids
from library.data.text import encode_tokens, tokenize_captions

NPZ_SUFFIX = "_te_outputs.npz"  # sd-scripts' SdxlTextEncoderOutputsCachingStrategy suffix


@dataclass
class Conditioning:
    """The UNet's text conditioning: hidden states, and for SDXL the pooled embedding."""

    hidden: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor | None = None  # SDXL: (B, P)


def join_windows(states: torch.Tensor, batch: int, window: int = 77) -> torch.Tensor:
    """(B*n, 77, D) window states → (B, 77 or n*75+2, D): BOS of the first window, the 75
    middle states of every window, the last state of the last window (sd-scripts)."""
    states = states.reshape(batch, -1, states.shape[-1])
    n = states.shape[1] // window
    if n == 1:
        return states
    parts = [states[:, :1]]
    parts += [states[:, i * window + 1:(i + 1) * window - 1] for i in range(n)]
    parts.append(states[:, -1:])
    return torch.cat(parts, dim=1)


def eos_pool(text_encoder_2: Any, last_hidden_state: torch.Tensor, input_ids: torch.Tensor,
             eos_token_id: int) -> torch.Tensor:
    """te2's pooled embedding: its projection of the final state at the first EOS token of each row.

    sd-scripts' `_pool_workaround`: CLIP's own pooling takes the position of the largest token
    id, which is wrong once textual-inversion tokens (ids above EOS) appear.
    """
    index = torch.argmax((input_ids == eos_token_id).int(), dim=1).to(last_hidden_state.device)
    rows = torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device)
    pooled = last_hidden_state[rows, index]
    projection = text_encoder_2.text_projection
    return projection(pooled.to(projection.weight.dtype)).to(last_hidden_state.dtype)


def encode_sdxl(text_encoder_1: Any, text_encoder_2: Any, ids_1: torch.Tensor, ids_2: torch.Tensor,
                eos_token_id: int, window: int = 77) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(te1 hidden, te2 hidden, pooled) for token ids shaped (B, n*77), as sd-scripts encodes SDXL captions."""
    batch = ids_1.shape[0]
    flat_1 = ids_1.reshape(-1, window).to(text_encoder_1.device)
    flat_2 = ids_2.reshape(-1, window).to(text_encoder_2.device)
    out_1 = text_encoder_1(flat_1, output_hidden_states=True, return_dict=True)
    hidden_1 = out_1.hidden_states[-2]
    out_2 = text_encoder_2(flat_2, output_hidden_states=True, return_dict=True)
    hidden_2 = out_2.hidden_states[-2]
    pooled = eos_pool(text_encoder_2, out_2.last_hidden_state, flat_2, eos_token_id)
    n = flat_1.shape[0] // batch
    return join_windows(hidden_1, batch, window), join_windows(hidden_2, batch, window), pooled[::n]


def sdxl_time_ids(original_sizes: Sequence[tuple[int, int]], bucket: tuple[int, int],
                  flipped: Sequence[bool]) -> torch.Tensor:
    """(B, 6) float time ids of a batch: original (h, w), crop (top, left), target (h, w) per image."""
    rows = [size_crop_ids(tuple(size), tuple(bucket), bool(flip)) for size, flip in zip(original_sizes, flipped)]
    return torch.tensor(rows, dtype=torch.float32)


class TextEncoding:
    """Captions → Conditioning for one model bundle (the family decides how)."""

    def __init__(self, bundle: Any, clip_skip: int | None, max_token_length: int | None) -> None:
        self.bundle = bundle
        self.sdxl = getattr(bundle, "text_encoder_2", None) is not None
        self.clip_skip = clip_skip
        self.max_token_length = max_token_length

    def encode(self, input_ids: torch.Tensor | None, captions: Sequence[str]) -> Conditioning:
        b = self.bundle
        if input_ids is None:
            input_ids = tokenize_captions(b.tokenizer, captions, self.max_token_length)
        if not self.sdxl:
            return Conditioning(encode_tokens(b.text_encoder, input_ids, self.clip_skip))
        ids_2 = tokenize_captions(b.tokenizer_2, captions, self.max_token_length)
        h1, h2, pooled = encode_sdxl(b.text_encoder, b.text_encoder_2, input_ids, ids_2, b.tokenizer_2.eos_token_id)
        return Conditioning(torch.cat([h1, h2.to(h1.dtype)], dim=-1), pooled)


class TextCache:
    """Text-encoder outputs per caption, on the CPU (valid while the encoders are frozen)."""

    def __init__(self) -> None:
        self.hidden: dict[str, torch.Tensor] = {}
        self.pooled: dict[str, torch.Tensor] = {}

    def __contains__(self, caption: str) -> bool:
        return caption in self.hidden

    def covers(self, captions: Iterable[str]) -> bool:
        return all(c in self.hidden for c in captions)

    def lookup(self, captions: Sequence[str], device: torch.device, dtype: torch.dtype) -> Conditioning:
        hidden = torch.stack([self.hidden[c] for c in captions]).to(device, dtype, non_blocking=True)
        pooled = None
        if self.pooled:
            pooled = torch.stack([self.pooled[c] for c in captions]).to(device, dtype, non_blocking=True)
        return Conditioning(hidden, pooled)

    @torch.no_grad()
    def fill(self, encoding: TextEncoding, captions: Iterable[str], batch_size: int = 8) -> None:
        todo = [c for c in dict.fromkeys(captions) if c not in self.hidden]
        for start in range(0, len(todo), batch_size):
            group = todo[start:start + batch_size]
            cond = encoding.encode(None, group)
            for i, caption in enumerate(group):
                self.hidden[caption] = cond.hidden[i].float().cpu()
                if cond.pooled is not None:
                    self.pooled[caption] = cond.pooled[i].float().cpu()

    def fill_from_disk(self, encoding: TextEncoding, items: Iterable[tuple[Path, str]]) -> tuple[int, int]:
        """SDXL: reuse or write `<stem>_te_outputs.npz` beside each image; returns (reused, written)."""
        import numpy as np

        from library.fileio import atomic_open

        reused = written = 0
        d1 = encoding.bundle.text_encoder.config.hidden_size
        for image_path, caption in items:
            npz = Path(os.path.splitext(str(image_path))[0] + NPZ_SUFFIX)
            if caption in self.hidden and npz.exists():
                continue
            cached = _read_npz(npz, caption)
            if cached is not None:
                h1, h2, pool = cached
                self.hidden[caption] = torch.cat([h1, h2], dim=-1)
                self.pooled[caption] = pool
                reused += 1
                continue
            self.fill(encoding, [caption])
            hidden, pool = self.hidden[caption], self.pooled[caption]
            with atomic_open(npz, "wb") as fh:
                np.savez(fh, hidden_state1=hidden[:, :d1].numpy(), hidden_state2=hidden[:, d1:].numpy(),
                         pool2=pool.numpy(), caption=np.array(caption))
            written += 1
        return reused, written


def _read_npz(path: Path, caption: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The cached arrays when the file exists, is readable and encodes this caption; else None."""
    import numpy as np

    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if "caption" not in data or str(data["caption"]) != caption:
                return None
            return (torch.from_numpy(data["hidden_state1"]).float(), torch.from_numpy(data["hidden_state2"]).float(),
                    torch.from_numpy(data["pool2"]).float())
    except (OSError, ValueError, KeyError):
        return None
