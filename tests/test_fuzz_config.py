"""Fuzzing config values (issue 23): inf/nan/huge numbers, wrong types, deep nesting in TOML/JSON and on the
command line. Whatever goes in, only LorasmithError subclasses may come out of reading and validating."""
from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from library.config import TrainConfig, base_type, option_fields, value_range
from library.config_io import config_from_mapping
from library.config_resolve import load_config_source, parse_train_args
from library.config_validate import check_config, validate
from library.data.dataset_config import load_dataset_config, specs_from_user_config
from library.errors import ConfigError, LorasmithError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
FIELDS = sorted(f.name for f in option_fields())
NUMBER_FIELDS = sorted(n for n in FIELDS if base_type(n) in (int, float))

hostile_numbers = (
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-320, 2**31, 2**32, 2**63, 2**64, -2**63,
                     10**30, 10**400, -1, 0, 0.5])
    | st.integers(-2**80, 2**80) | st.floats(allow_nan=True, allow_infinity=True))
hostile_text = st.sampled_from(["nan", "inf", "-inf", "1e400", "-1e400", "1e29", "0x10", "1_000", "9" * 400,
                                "", " ", "None", "true", "1.5", "-0", "+1", "\x00", "１２"]) | st.text(max_size=12)
leaf = hostile_numbers | hostile_text | st.booleans() | st.none()
nested = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                      max_leaves=8)


def only_ours(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except LorasmithError:
        return None


def read_and_validate(values: dict) -> None:
    cfg = only_ours(config_from_mapping, values, source="fuzz")
    if cfg is not None:
        check_config(cfg)  # the GUI calls this on every edit: it must never raise
        only_ours(validate, cfg)


@FUZZ
@given(st.dictionaries(st.sampled_from(NUMBER_FIELDS), hostile_numbers | hostile_text, min_size=1, max_size=4))
def test_hostile_numbers_in_a_mapping(values) -> None:
    read_and_validate(values)


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), nested, min_size=1, max_size=4))
def test_wrong_types_in_a_mapping(values) -> None:
    read_and_validate(values)


@FUZZ
@given(st.sampled_from(NUMBER_FIELDS), hostile_numbers.map(str) | hostile_text)
def test_hostile_flag_values(name: str, text: str) -> None:
    try:
        cfg, _ = parse_train_args([f"--{name}={text}"])
    except SystemExit:  # argparse's own one-line error for a value it cannot convert
        return
    only_ours(validate, cfg)


@FUZZ
@given(st.sampled_from(NUMBER_FIELDS), hostile_numbers)
def test_a_number_that_passes_validation_is_finite_and_in_range(name: str, value) -> None:
    if base_type(name) is int and isinstance(value, float):
        return
    cfg = TrainConfig(**{name: value})
    if not check_config(cfg, for_training=False).errors:
        lo, hi = value_range(name)
        assert math.isfinite(float(value))
        assert (lo is None or value >= lo) and (hi is None or value <= hi)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([".toml", ".json"]), st.integers(1, 3000), st.sampled_from(["[", "{\"a\": "]),
       st.sampled_from(NUMBER_FIELDS), hostile_numbers)
def test_nested_and_hostile_files(tmp_path_factory, suffix: str, depth: int, opener: str, name: str, value) -> None:
    path = tmp_path_factory.mktemp("fuzz") / f"c{suffix}"
    if suffix == ".json":
        closer = "]" if opener == "[" else "}"
        number = json.dumps(value) if not isinstance(value, int) or abs(value) < 10**300 else "1" * 500
        path.write_text(f'{{"{name}": {number}, "x": ' + opener * depth + "1" + closer * depth + "}")
    else:
        number = {math.inf: "inf", -math.inf: "-inf"}.get(value, "nan" if value != value else repr(value))
        table = "[" + ".".join(["t"] * depth) + "]"
        path.write_text(f"{name} = {number}\nx = " + "[" * depth + "1" + "]" * depth + f"\n{table}\ny = 1\n")
    cfg = only_ours(load_config_source, path)
    if cfg is not None:
        only_ours(validate, cfg)
    user = only_ours(load_dataset_config, path)
    if isinstance(user, dict):
        only_ours(specs_from_user_config, user)


def test_fuzz_errors_are_config_errors() -> None:
    """The types the fuzzers accept are ours: a NaN learning rate is a ConfigError naming the field."""
    try:
        validate(TrainConfig(learning_rate=math.nan), for_training=False)
    except ConfigError as exc:
        assert "learning_rate" in str(exc)
    else:
        raise AssertionError("nan learning rate accepted")
