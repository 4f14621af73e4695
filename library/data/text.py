"""Captions → token ids → text-encoder hidden states, shared by the trainer and the sampler.

Facts from sd-scripts (`TokenizeStrategy._get_input_ids`, `SdTextEncodingStrategy
.encode_tokens`): without `--max_token_length` a caption is one 77-token window
(BOS, 75 tokens, EOS/padding). With 150 or 225 the caption is tokenized to
152/227 ids and cut into 2 or 3 windows of 77, each `BOS + 75 ids + last id`;
the encoder runs on every window, and the outputs are joined as
`BOS state of window 1 + the 75 middle states of every window + last state of
the last window` (so 152 or 227 positions). `--clip_skip N` takes
`hidden_states[-N]` and applies the encoder's final layer norm (N=1 is the
normal output).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from library.errors import ConfigError

ALLOWED_MAX_TOKEN_LENGTHS = (None, 75, 150, 225)


def chunk_count(max_token_length: int | None) -> int:
    """How many 77-token windows a caption uses (1, 2 or 3)."""
    if max_token_length not in ALLOWED_MAX_TOKEN_LENGTHS:
        raise ConfigError(
            f"max_token_length: {max_token_length!r} is not supported",
            ["max_token_length: use 75 (or leave it empty), 150 or 225"],
        )
    return 1 if max_token_length is None else max_token_length // 75


def tokenize_caption(tokenizer, caption: str, max_token_length: int | None = None) -> torch.Tensor:
    """Token ids of one caption as (n_windows, 77), windows built as sd-scripts builds them."""
    window = tokenizer.model_max_length
    n = chunk_count(max_token_length)
    length = window if n == 1 else max_token_length + 2
    ids = tokenizer(caption, padding="max_length", truncation=True, max_length=length, return_tensors="pt").input_ids[0]
    if n == 1:
        return ids.unsqueeze(0)
    chunks = []
    for start in range(1, length - window + 2, window - 2):
        chunk = torch.cat([ids[:1], ids[start : start + window - 2], ids[-1:]])
        if tokenizer.pad_token_id != tokenizer.eos_token_id:  # SD2-style tokenizer: keep an EOS in each window
            if chunk[-2] not in (tokenizer.eos_token_id, tokenizer.pad_token_id):
                chunk[-1] = tokenizer.eos_token_id
            if chunk[1] == tokenizer.pad_token_id:
                chunk[1] = tokenizer.eos_token_id
        chunks.append(chunk)
    return torch.stack(chunks)


def tokenize_captions(tokenizer, captions: Iterable[str], max_token_length: int | None = None) -> torch.Tensor:
    """Token ids of a batch as (B, n_windows * 77) — the layout batches carry as `input_ids`."""
    rows = [tokenize_caption(tokenizer, c, max_token_length).reshape(-1) for c in captions]
    return torch.stack(rows)


def final_layer_norm(text_encoder) -> torch.nn.Module:
    """The encoder's last LayerNorm (transformers 5 keeps it on the model, 4.x under `.text_model`)."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def encode_tokens(text_encoder, input_ids: torch.Tensor, clip_skip: int | None = None, window: int = 77) -> torch.Tensor:
    """Hidden states (B, 77 or n*75+2, D) for ids shaped (B, n*77) or (B, n, 77)."""
    batch = input_ids.shape[0]
    flat = input_ids.reshape(-1, window).to(text_encoder.device)
    if clip_skip is None or clip_skip <= 1:
        states = text_encoder(flat)[0]
    else:
        out = text_encoder(flat, output_hidden_states=True, return_dict=True)
        states = final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])
    states = states.reshape(batch, -1, states.shape[-1])
    n = states.shape[1] // window
    if n == 1:
        return states
    parts = [states[:, :1]]
    parts += [states[:, i * window + 1 : (i + 1) * window - 1] for i in range(n)]
    parts.append(states[:, -1:])
    return torch.cat(parts, dim=1)


@torch.no_grad()
def cache_text_encoder_outputs(
    tokenizer,
    text_encoder,
    captions: Iterable[str],
    *,
    max_token_length: int | None = None,
    clip_skip: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Caption → encoder output (on CPU) for every distinct caption; valid while the encoder is frozen."""
    from tqdm import tqdm

    unique = list(dict.fromkeys(captions))
    result: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(unique), batch_size), desc="caching text encoder outputs", disable=not progress):
        group = unique[start : start + batch_size]
        ids = tokenize_captions(tokenizer, group, max_token_length)
        states = encode_tokens(text_encoder, ids, clip_skip).float().cpu()
        result.update(zip(group, states))
    return result
