"""Hostile config values (issue 23): nan/inf, huge numbers, deep nesting are refused with a range, before any model loads."""
from __future__ import annotations

import json

import pytest

from library import cli
from library.config import INT_MAX_DEFAULT, TrainConfig, base_type, option_fields, value_range
from library.config_io import nesting_depth, read_config_file
from library.config_resolve import load_config_source
from library.config_validate import validate
from library.data.dataset_config import load_dataset_config
from library.errors import ConfigError

HOSTILE_FLAGS = [
    ("network_dim", "inf", "network_dim"), ("network_dim", "1e400", "network_dim"),
    ("learning_rate", "nan", "learning_rate"), ("learning_rate", "inf", "learning_rate"),
    ("unet_lr", "nan", "unet_lr"), ("network_alpha", "nan", "network_alpha"),
    ("noise_offset", "nan", "noise_offset"), ("seed", "1e29", "seed"),
    ("resolution", "10000000", "resolution"), ("max_data_loader_n_workers", "1000", "max_data_loader_n_workers"),
    ("max_train_steps", "9" * 40, "max_train_steps"), ("text_encoder_lr", "-inf", "text_encoder_lr"),
]


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if anything gets as far as preparing data or building models."""
    import library.training.trainer as trainer

    def boom(*a, **k):
        raise AssertionError("got past validation")

    monkeypatch.setattr(trainer, "prepare_data", boom)
    monkeypatch.setattr(trainer, "build_run", boom)


@pytest.mark.parametrize("flag,value,named", HOSTILE_FLAGS)
def test_hostile_flag_is_refused_by_name_before_models(flag, value, named, tmp_path, capsys, no_models) -> None:
    (tmp_path / "data" / "1_x").mkdir(parents=True)
    argv = ["train", "--pretrained_model_name_or_path", "tiny", "--train_data_dir", str(tmp_path / "data"),
            "--output_dir", str(tmp_path / "out"), f"--{flag}={value}"]
    try:
        rc = cli.main(argv)
    except SystemExit as exc:  # argparse refuses a value that is no number at all
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert named in err and "Traceback" not in err
    assert "use a value" in err or "too large" in err
    assert not (tmp_path / "out").exists()


def test_every_number_field_has_a_finite_upper_bound() -> None:
    for f in option_fields():
        if base_type(f.name) is int:
            lo, hi = value_range(f.name)
            assert hi is not None and hi <= max(INT_MAX_DEFAULT, 2**32 - 1), f.name


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_field_refuses_non_finite(value) -> None:
    floats = [f.name for f in option_fields() if base_type(f.name) is float]
    assert len(floats) > 10
    for name in floats:
        with pytest.raises(ConfigError, match=name):
            validate(TrainConfig(**{name: value}), for_training=False)


def test_seed_range_and_workers_warning(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="seed: .* use a value from 0 to 4294967295"):
        validate(TrainConfig(seed=2**32), for_training=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    warnings = validate(TrainConfig(max_data_loader_n_workers=16), for_training=False)
    assert any("16 is more than the 2 CPU cores" in w for w in warnings)


def test_dataloader_workers_capped_at_cpu_count(monkeypatch) -> None:
    from library.data.dataset import make_dataloader

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert make_dataloader([], 16).num_workers == 2  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", [".toml", ".json"])
@pytest.mark.parametrize("depth", [40, 200_000])
def test_deeply_nested_config_is_a_named_error(tmp_path, suffix, depth) -> None:
    path = tmp_path / f"deep{suffix}"
    if suffix == ".json":
        path.write_text('{"x": ' + "[" * depth + "]" * depth + "}")
    else:
        path.write_text("x = " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError, match="nested more than 32 deep"):
        read_config_file(path)
    with pytest.raises(ConfigError, match="nested more than 32 deep"):
        load_config_source(path)
    with pytest.raises(ConfigError, match="nested more than 32 deep"):
        load_dataset_config(path)


def test_deep_toml_tables_are_a_named_error(tmp_path) -> None:
    """Table headers nest without recursion in the parser, but flattening them recursed."""
    path = tmp_path / "tables.toml"
    path.write_text("[" + ".".join(["a"] * 5000) + "]\nseed = 1\n")
    with pytest.raises(ConfigError, match="nested more than 32"):
        read_config_file(path)


def test_huge_numbers_in_files_are_named(tmp_path) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"seed": 10**30}))
    with pytest.raises(ConfigError, match=r"seed: 1e\+30 is out of range; use a value from 0 to 4294967295"):
        validate(load_config_source(path), for_training=False)
    path.write_text(json.dumps({"learning_rate": 1e308}).replace("1e+308", "1e400"))
    with pytest.raises(ConfigError, match="learning_rate in .*: inf is not a finite number"):
        load_config_source(path)
    path.write_text('{"seed": ' + "9" * 5000 + "}")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_config_file(path)


def test_nesting_depth_counts_without_recursion() -> None:
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert nesting_depth(deep) == 100_001
    assert nesting_depth({"a": {"b": 1}, "c": [1, 2]}) == 2
    assert nesting_depth(3) == 0


def test_hostile_numbers_in_a_dataset_config(tmp_path) -> None:
    from library.data.dataset_config import load_dataset_specs

    path = tmp_path / "ds.toml"
    path.write_text("[general]\nprior_loss_weight = nan\nresolution = 10000000\n[[datasets]]\nbatch_size = 99999999999\n"
                    "[[datasets.subsets]]\nimage_dir = 'x'\nnum_repeats = inf\n")
    with pytest.raises(ConfigError) as err:
        load_dataset_specs(path)
    text = str(err.value)
    assert "'prior_loss_weight' = nan is not a usable number" in text
    assert "'batch_size' = 99999999999 is not a usable number" in text
    assert "'num_repeats' = inf should be int" in text
    path.write_text("[general]\nresolution = 10000000\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\n")
    with pytest.raises(ConfigError, match="whole numbers from 1 to 8192"):
        load_dataset_specs(path)
