"""A1111 prompt syntax: attention weights, escapes, BREAK, chunking, LoRA tags, emphasis."""
from __future__ import annotations

import pytest
import torch

from library.errors import SamplingError
from library.models import load_tokenizer
from library.sampling.conditioning import apply_emphasis, pad_chunks
from library.sampling.prompt_parser import (
    BREAK,
    LoraTag,
    chunk_tokens,
    extract_lora_tags,
    parse_prompt_attention,
    tokenize_prompt,
)


def approx_runs(runs):
    return [(t, pytest.approx(w)) for t, w in runs]


# Expected runs are A1111's documented examples (prompt_parser.parse_prompt_attention docstring),
# with weights worked out by hand: 1.3 * 1.1 * 1.1 = 1.573, 0.5 * 1.1 = 0.55, 1.1^4 = 1.4641.
@pytest.mark.parametrize("prompt,expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("((word))", [("word", 1.21)]),
    ("[word]", [("word", 1 / 1.1)]),
    ("(word:1.3)", [("word", 1.3)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641), (".", 1.1)]),
    ("a (b [c] d:1.5)", [("a ", 1.0), ("b ", 1.5), ("c", 1.5 / 1.1), (" d", 1.5)]),
    ("", [("", 1.0)]),
])
def test_attention_weights(prompt, expected):
    assert parse_prompt_attention(prompt) == approx_runs(expected)


def test_break_splits_runs():
    assert parse_prompt_attention("red car BREAK (blue:1.2) sky") == approx_runs(
        [("red car", 1.0), (BREAK, -1.0), ("", 1.0), ("blue", 1.2), (" sky", 1.0)])  # empty run as in A1111
    # lower-case or embedded BREAK is ordinary text
    assert parse_prompt_attention("a break b BREAKFAST") == [("a break b BREAKFAST", 1.0)]


def test_lora_tags_extracted_and_removed():
    text, tags = extract_lora_tags("photo of ohwx man <lora:ohwx-000003:0.9>, <lora:style>, smiling")
    assert text == "photo of ohwx man , , smiling"
    assert tags == [LoraTag("ohwx-000003", 0.9), LoraTag("style", 1.0)]


def test_lora_tag_with_bad_weight_is_an_error():
    with pytest.raises(SamplingError, match="heavy"):
        extract_lora_tags("x <lora:name:heavy>")


BOS, EOS, COMMA = 1000, 1001, 9


def test_chunking_pads_to_77_with_bos_eos():
    chunks = chunk_tokens([([5, 6, 7], 1.2)], bos=BOS, eos=EOS, comma=COMMA)
    assert len(chunks) == 1
    c = chunks[0]
    assert len(c.tokens) == 77 and c.tokens[:4] == [BOS, 5, 6, 7] and c.tokens[4:] == [EOS] * 73
    assert c.weights[1:4] == [1.2] * 3 and c.weights[0] == 1.0 and c.weights[4:] == [1.0] * 73


def test_long_prompt_continues_in_second_chunk():
    chunks = chunk_tokens([(list(range(80)), 1.0)], bos=BOS, eos=EOS, comma=COMMA + 1000)
    assert [len(c.tokens) for c in chunks] == [77, 77]
    assert chunks[0].tokens[1:76] == list(range(75)) and chunks[1].tokens[1:6] == list(range(75, 80))


def test_split_at_last_comma_within_20_tokens():
    # 60 tokens, a comma, then 20 more: the chunk fills at 75 with the comma 15 tokens back,
    # so everything after the comma moves to the second chunk.
    tokens = [2] * 60 + [COMMA] + [3] * 20
    chunks = chunk_tokens([(tokens, 1.0)], bos=BOS, eos=EOS, comma=COMMA)
    assert chunks[0].tokens[1:62] == [2] * 60 + [COMMA]
    assert chunks[0].tokens[62:] == [EOS] * 15
    assert chunks[1].tokens[1:21] == [3] * 20


def test_comma_further_back_than_20_does_not_move_tokens():
    tokens = [2] * 50 + [COMMA] + [3] * 30
    chunks = chunk_tokens([(tokens, 1.0)], bos=BOS, eos=EOS, comma=COMMA)
    assert chunks[0].tokens[1:76] == tokens[:75]


def test_break_closes_the_chunk():
    chunks = chunk_tokens([([4, 5], 1.0), ([], -1.0), ([6], 1.0)], bos=BOS, eos=EOS, comma=COMMA)
    assert len(chunks) == 2 and chunks[0].tokens[1:4] == [4, 5, EOS] and chunks[1].tokens[1:3] == [6, EOS]


def test_tokenize_prompt_with_real_tokenizer():
    tok = load_tokenizer()
    chunks = tokenize_prompt(tok, "a (cat:1.5) BREAK dog")
    assert len(chunks) == 2
    cat = tok("cat", add_special_tokens=False).input_ids
    assert chunks[0].tokens[2:2 + len(cat)] == cat and chunks[0].weights[2] == pytest.approx(1.5)
    long = ", ".join(["red apple"] * 40)  # 3 tokens per item -> ~120 tokens
    assert len(tokenize_prompt(tok, long)) == 2


def test_emphasis_keeps_mean_and_scales_relative_weights():
    z = torch.arange(1, 1 + 77 * 4, dtype=torch.float32).reshape(77, 4) / 100
    w = torch.ones(77)
    w[3] = 1.5
    out = apply_emphasis(z, w)
    assert float(out.mean()) == pytest.approx(float(z.mean()), rel=1e-6)
    ratio = out[3] / out[2] / (z[3] / z[2])
    assert torch.allclose(ratio, torch.full((4,), 1.5), rtol=1e-5)


def test_pad_chunks_appends_empty_chunks():
    z = torch.zeros(1, 77, 8)
    empty = torch.ones(1, 77, 8)
    out = pad_chunks(z, 231, empty)
    assert out.shape == (1, 231, 8) and float(out[:, 77:].mean()) == 1.0


def test_emphasis_on_zero_mean_states_only_scales():
    # a fresh encoder's LayerNorm output has mean 0: A1111's rescale would divide 0 by 0
    z = torch.tensor([[1.0, -1.0]] * 77)
    w = torch.ones(77)
    w[5] = 2.0
    out = apply_emphasis(z, w)
    assert bool(torch.isfinite(out).all()) and torch.equal(out[5], torch.tensor([2.0, -2.0]))
