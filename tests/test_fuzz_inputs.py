"""Property-based fuzzing (bounded): only LorasmithError subclasses may escape our parsers and loaders."""
from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from library.config import alias_map
from library.config_io import config_from_mapping
from library.config_resolve import load_config_source
from library.errors import LorasmithError
from library.evaluation.values import parse_float_values, parse_int_values, parse_size
from library.lora import load_lora
from library.sampling.prompt_parser import extract_lora_tags, parse_prompt_attention

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SCRATCH = Path(tempfile.mkdtemp(prefix="lorasmith-fuzz-"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10)
keys = st.sampled_from(sorted(alias_map())) | st.text(max_size=20)


def only_ours(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except LorasmithError:
        return None


@FUZZ
@given(st.dictionaries(keys, json_values, max_size=6))
def test_config_from_mapping(values) -> None:
    only_ours(config_from_mapping, values, source="fuzz")


@FUZZ
@given(st.sampled_from([".toml", ".json"]), st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_config_file_loader(suffix: str, data: bytes) -> None:
    path = SCRATCH / f"fuzz{suffix}"
    path.write_bytes(data)
    only_ours(load_config_source, path)


@FUZZ
@given(st.text(alphabet=st.sampled_from("ab ,:()[]<>\\|lora:0.5-1e=") | st.characters(), max_size=80))
def test_prompt_parser(prompt: str) -> None:
    runs = only_ours(parse_prompt_attention, prompt)
    if runs is not None:
        assert all(isinstance(t, str) and isinstance(w, float) for t, w in runs)
    only_ours(extract_lora_tags, prompt)


no_newline = st.characters()
range_text = (st.text(alphabet=st.sampled_from("0123456789-+.,e()[] xX:"), max_size=30)
              | st.text(alphabet=no_newline, max_size=30))


@FUZZ
@given(range_text)
def test_range_value_parsers(text: str) -> None:
    ints = only_ours(parse_int_values, text)
    if ints is not None:
        assert all(isinstance(i, int) for i in ints)
    only_ours(parse_float_values, text)
    only_ours(parse_size, text)


def test_range_values_with_line_breaks() -> None:
    """Found by the fuzzer: a bare carriage return used to let csv.Error escape."""
    assert parse_int_values("\r0") == [0]
    assert parse_int_values("1\n2\r\n3") == [1, 2, 3]


def lora_bytes() -> bytes:
    path = SCRATCH / "seed.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{name}.lora_down.weight": torch.ones(2, 4), f"{name}.lora_up.weight": torch.ones(4, 2),
               f"{name}.alpha": torch.tensor(2.0)}, str(path))
    return path.read_bytes()


SEED = lora_bytes()


@st.composite
def mutated_lora(draw) -> bytes:
    data = bytearray(SEED)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


@FUZZ
@given(st.sampled_from([".safetensors", ".pt", ".ckpt"]),
       st.binary(max_size=200) | mutated_lora() | st.binary(max_size=64).map(lambda b: struct.pack("<Q", len(b)) + b))
def test_lora_loader_on_random_bytes(suffix: str, data: bytes) -> None:
    path = SCRATCH / f"fuzz{suffix}"
    path.write_bytes(data)
    only_ours(load_lora, path)


@pytest.fixture(scope="module", autouse=True)
def cleanup():
    yield
    for p in SCRATCH.iterdir():
        p.unlink()
    SCRATCH.rmdir()
