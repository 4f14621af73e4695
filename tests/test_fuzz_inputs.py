"""Property-based fuzzing (bounded): only LorasmithError subclasses may escape our parsers and loaders."""
from __future__ import annotations

import json
import shutil
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
from library.lora.inspect import verify_lora
from library.models.checkpoint_io import read_state_dict
from library.sampling.dynamic_prompts import expand_prompt
from library.sampling.lora_stack import resolve_lora
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


# --- hostile safetensors headers (issue 23): every reader shares library.safetensors_header -------------
counts = st.integers(0, 64)
json_leaves = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8)
header_entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "U8", "BOOL", "F64", "F8_E4M3", "Q99", ""]) | json_values,
    "shape": st.lists(counts, max_size=3) | st.lists(json_leaves, max_size=3) | json_values,
    "data_offsets": st.lists(counts, min_size=2, max_size=2) | st.lists(st.integers(-5, 2**66), max_size=3) | json_values,
}) | json_values
header_metadata = st.dictionaries(st.text(max_size=8), st.text(max_size=8) | json_leaves, max_size=3) | json_values


@st.composite
def hostile_headers(draw) -> bytes:
    """A safetensors file whose header is random in type and structure, or JSON nested up to 300,000 deep."""
    if draw(st.integers(0, 5)) == 0:
        depth = draw(st.sampled_from([1, 2, 99, 1_000, 20_000, 200_000, 300_000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        body = opener * depth + b"1" + closer * depth
        raw = draw(st.sampled_from([body, b'{"__metadata__":' + body + b"}", b'{"x":' + body + b"}"]))
    else:
        header = draw(st.dictionaries(st.text(max_size=12), header_entries, max_size=3))
        if draw(st.booleans()):
            header["__metadata__"] = draw(header_metadata)
        raw = json.dumps(header).encode()
    length = len(raw) if draw(st.integers(0, 4)) else draw(st.integers(0, 2**64 - 1))
    return struct.pack("<Q", length) + raw + bytes(draw(st.integers(0, 300)))


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_headers())
def test_hostile_safetensors_headers_give_only_our_errors(data: bytes) -> None:
    path = SCRATCH / "hostile.safetensors"
    path.write_bytes(data)
    only_ours(load_lora, path)  # inspect, --network_weights and <lora:…> all read through load_lora
    only_ours(read_state_dict, path)  # --pretrained_model_name_or_path
    passed, problems = verify_lora(path)
    assert problems or passed


# --- prompt paths (issue 23): nothing outside --lora_dir / --wildcards_dir is ever read -----------------
PROMPT_ROOT = SCRATCH / "prompt"
(PROMPT_ROOT / "loras" / "sub").mkdir(parents=True)
(PROMPT_ROOT / "wildcards").mkdir()
(PROMPT_ROOT / "outside").mkdir()
(PROMPT_ROOT / "loras" / "mine.safetensors").write_bytes(b"x")
(PROMPT_ROOT / "loras" / "sub" / "deep.safetensors").write_bytes(b"x")
(PROMPT_ROOT / "wildcards" / "color.txt").write_text("red\n")
(PROMPT_ROOT / "outside" / "real.safetensors").write_bytes(b"secret")
(PROMPT_ROOT / "outside" / "real.txt").write_text("secret\n")
(PROMPT_ROOT / "loras" / "link.safetensors").symlink_to(PROMPT_ROOT / "outside" / "real.safetensors")
(PROMPT_ROOT / "wildcards" / "link.txt").symlink_to(PROMPT_ROOT / "outside" / "real.txt")
escapes = st.sampled_from(["../outside/real", "../../outside/real", str(PROMPT_ROOT / "outside" / "real"), "link",
                           "sub/../../outside/real", "mine", "sub/deep", "color", "~", "//", "./", "sub/./deep"])
prompt_names = (escapes | st.text(alphabet=st.sampled_from("./\\~ab_-:*?$\x00 "), max_size=24)
                | st.tuples(escapes, st.text(alphabet=st.sampled_from("./ab"), max_size=6)).map("".join))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(prompt_names)
def test_prompt_names_never_reach_outside_their_folder(name: str) -> None:
    loras = (PROMPT_ROOT / "loras").resolve()
    path = only_ours(resolve_lora, name, loras)
    if path is not None:
        assert path.resolve().is_relative_to(loras) and path.read_bytes() == b"x", (name, path)
    text = only_ours(expand_prompt, f"a __{name}__ b", 1, PROMPT_ROOT / "wildcards")
    assert text is None or "secret" not in text, (name, text)
    tags = only_ours(extract_lora_tags, f"a <lora:{name}:1> b")
    for tag in (tags or ("", []))[1]:
        found = only_ours(resolve_lora, tag.name, loras)
        assert found is None or found.resolve().is_relative_to(loras)


# --- hostile resume states (issue 23): a real train_state.pt with random parts replaced or removed ------------
DELETE = object()
state_values = (json_values | st.integers(-2**70, 2**70) | st.just(DELETE)
                | st.lists(st.integers(0, 3), max_size=3).map(lambda shape: torch.zeros(shape)))


def draw_path(data, obj) -> tuple:
    """A path (keys/indices) into nested dicts and lists, one level at a time, so that each part of the state
    (not only its longest list, the 625 ints of Python's RNG) is hit about as often."""
    path: tuple = ()
    while isinstance(obj, (dict, list)) and obj and (not path or data.draw(st.booleans())):
        key = data.draw(st.sampled_from(sorted(obj, key=str) if isinstance(obj, dict) else range(len(obj))))
        path, obj = path + (key,), obj[key]
    return path


def replace_at(obj, path, value) -> None:
    for key in path[:-1]:
        obj = obj[key] if isinstance(obj, (dict, list)) and (key in obj if isinstance(obj, dict) else key < len(obj)) else None
        if obj is None:
            return
    if isinstance(obj, dict) and value is DELETE:
        obj.pop(path[-1], None)
    elif isinstance(obj, dict) or (isinstance(obj, list) and path[-1] < len(obj)):
        obj[path[-1]] = None if value is DELETE else value


@pytest.fixture(scope="module")
def resume_kit(shapes_data, tmp_path_factory):
    """(state folder, freshly built run parts, plan, loaded state) of a one-epoch tiny run; RNGs put back after."""
    import random

    import numpy as np

    from library.config import TrainConfig
    from library.data.prepare import prepare_data
    from library.training.setup import build_run
    from library.training.state import load_train_state
    from library.training.trainer import train

    out = tmp_path_factory.mktemp("fuzz-resume")
    cfg = TrainConfig(pretrained_model_name_or_path="tiny", train_data_dir=str(shapes_data), output_dir=str(out),
                      output_name="t", caption_extension=".txt", resolution="64", train_batch_size=2,
                      max_train_epochs=1, seed=3, save_state=True, optimizer_type="AdamW", lr_scheduler="cosine")
    train(cfg)
    prepared = prepare_data(cfg)
    saved_rngs = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    yield out / "t-state", build_run(cfg, prepared, cfg.seed), prepared.plan, load_train_state(out / "t-state")
    random.setstate(saved_rngs[0])
    np.random.set_state(saved_rngs[1])
    torch.set_rng_state(saved_rngs[2])


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_hostile_resume_states_give_only_our_errors(resume_kit, data) -> None:
    import copy
    from types import SimpleNamespace

    from library.training import state as run_state
    from library.training.tracking import LossRecorder
    from library.training.trainer import LoopPosition, Trainer

    folder, parts, plan, base = resume_kit
    state = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        replace_at(state, draw_path(data, state), data.draw(state_values))

    def resume() -> None:  # what _train_prepared does with a loaded state, in its order
        run_state.check_train_state(folder, state, plan)
        run_state.check_processes(folder, state, 1)
        run_state.restore(folder, parts, state)
        LoopPosition(**state["position"])
        loop = SimpleNamespace(recorder=LossRecorder())
        run_state.restore_part(folder, "loss history", lambda s: Trainer.load_extra_state(loop, s), state)
        for param in parts.trainable_params:  # one step: values that load but break the optimizer show here
            param.grad = torch.zeros_like(param)
        parts.optimizer.optimizer.step()
        parts.lr_scheduler.step()

    only_ours(resume)


@pytest.fixture(scope="module", autouse=True)
def cleanup():
    yield
    shutil.rmtree(SCRATCH, ignore_errors=True)
