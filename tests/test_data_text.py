"""Tokenization windows and text encoding as sd-scripts builds them, on the tiny text encoder."""
from __future__ import annotations

import pytest
import torch

from library.data.text import cache_text_encoder_outputs, chunk_count, encode_tokens, final_layer_norm, tokenize_caption, tokenize_captions
from library.errors import ConfigError

models_tokenizer = pytest.importorskip("library.models.tokenizer")
BOS, EOS = 49406, 49407
LONG = ", ".join(f"tag{i} word" for i in range(60))  # far more than 150 tokens


@pytest.fixture(scope="module")
def tokenizer():
    return models_tokenizer.load_tokenizer()


@pytest.fixture(scope="module")
def text_encoder():
    builtin = pytest.importorskip("library.models.builtin")
    return builtin.build_tiny_bundle().text_encoder


def test_chunk_counts() -> None:
    assert [chunk_count(n) for n in (None, 75, 150, 225)] == [1, 1, 2, 3]
    with pytest.raises(ConfigError, match="max_token_length"):
        chunk_count(100)


def test_single_window(tokenizer) -> None:
    ids = tokenize_caption(tokenizer, "ohwx woman", None)
    assert ids.shape == (1, 77)
    assert ids[0, 0] == BOS and ids[0, -1] == EOS
    words = tokenizer("ohwx woman").input_ids[1:-1]
    assert ids[0, 1 : 1 + len(words)].tolist() == words
    assert (ids[0, 1 + len(words) :] == EOS).all()  # padding is EOS for SD1.x (pad == eos)


@pytest.mark.parametrize("max_len,windows", [(150, 2), (225, 3)])
def test_long_captions_split_into_windows(tokenizer, max_len, windows) -> None:
    ids = tokenize_caption(tokenizer, LONG, max_len)
    assert ids.shape == (windows, 77)
    assert (ids[:, 0] == BOS).all() and (ids[:, -1] == EOS).all()
    flat = tokenizer(LONG, padding="max_length", truncation=True, max_length=max_len + 2, return_tensors="pt").input_ids[0]
    assert torch.equal(ids[:, 1:-1].reshape(-1), flat[1:-1])


def test_batch_layout(tokenizer) -> None:
    ids = tokenize_captions(tokenizer, ["a", LONG], 150)
    assert ids.shape == (2, 154)


def test_encode_single_window_and_clip_skip(tokenizer, text_encoder) -> None:
    ids = tokenize_captions(tokenizer, ["ohwx woman", "a photo"])
    with torch.no_grad():
        plain = encode_tokens(text_encoder, ids)
        skip1 = encode_tokens(text_encoder, ids, clip_skip=1)
        skip2 = encode_tokens(text_encoder, ids, clip_skip=2)
        out = text_encoder(ids, output_hidden_states=True, return_dict=True)
        expected2 = final_layer_norm(text_encoder)(out.hidden_states[-2])
    assert plain.shape == (2, 77, 32)
    assert torch.allclose(plain, skip1)
    assert torch.allclose(skip2, expected2) and not torch.allclose(skip2, plain)


def test_encode_windows_concatenated(tokenizer, text_encoder) -> None:
    ids = tokenize_captions(tokenizer, [LONG], 150)
    with torch.no_grad():
        states = encode_tokens(text_encoder, ids)
        per_window = text_encoder(ids.reshape(2, 77))[0]
    assert states.shape == (1, 152, 32)
    expected = torch.cat([per_window[0, :1], per_window[0, 1:76], per_window[1, 1:76], per_window[1, 76:]])
    assert torch.allclose(states[0], expected)


def test_text_encoder_cache_one_entry_per_caption(tokenizer, text_encoder) -> None:
    cache = cache_text_encoder_outputs(tokenizer, text_encoder, ["a", "b", "a"], progress=False)
    assert list(cache) == ["a", "b"] and cache["a"].shape == (77, 32)
    with torch.no_grad():
        direct = encode_tokens(text_encoder, tokenize_captions(tokenizer, ["b"]))[0]
    assert torch.allclose(cache["b"], direct)
