"""sd-scripts dataset TOML: values fall back subset → dataset → general → command line; bad keys named."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from library.data.dataset_config import load_dataset_specs, specs_from_user_config
from library.data.prepare import prepare_data
from library.errors import ConfigError

TOML = """
[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1

[[datasets]]
resolution = [128, 96]
batch_size = 2
enable_bucket = true
min_bucket_reso = 64
max_bucket_reso = 256

  [[datasets.subsets]]
  image_dir = "{train}"
  num_repeats = 10
  class_tokens = "ohwx shape"
  flip_aug = true

  [[datasets.subsets]]
  image_dir = "{reg}"
  is_reg = true
  keep_tokens = 0
"""


class Args:
    train_batch_size = 7
    prior_loss_weight = 0.5
    caption_extension = ".caption"
    resolution = "512"


def write(tmp_path: Path) -> Path:
    for name in ("train", "reg"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (128, 96), (1, 2, 3)).save(tmp_path / name / "a.png")
    path = tmp_path / "dataset.toml"
    path.write_text(TOML.format(train=tmp_path / "train", reg=tmp_path / "reg"), encoding="utf-8")
    return path


def test_fallback_order(tmp_path: Path) -> None:
    [spec] = load_dataset_specs(write(tmp_path), Args())
    assert spec.resolution == (128, 96) and spec.batch_size == 2 and spec.prior_loss_weight == 0.5
    assert spec.geometry.enable_bucket and spec.geometry.min_bucket_reso == 64
    train, reg = spec.subsets
    assert (train.num_repeats, train.is_reg, train.class_tokens, train.flip_aug) == (10, False, "ohwx shape", True)
    assert train.caption_extension == ".txt" and train.captions.shuffle_caption and train.captions.keep_tokens == 1
    assert (reg.num_repeats, reg.is_reg, reg.captions.keep_tokens, reg.flip_aug) == (1, True, 0, False)


def test_prepare_data_uses_dataset_config(tmp_path: Path) -> None:
    class Cfg(Args):
        dataset_config = write(tmp_path)
        max_train_epochs = 2

    plan = prepare_data(Cfg()).plan
    # 1 train image x 10 repeats, the single reg image balanced to 10; batch 2 → 10 batches per epoch
    assert (plan.train_items, plan.reg_items, plan.batches_per_epoch, plan.total_steps) == (10, 10, 10, 20)


def test_every_problem_named_with_section_and_key() -> None:
    user = {
        "general": {"shuffle_captions": True},
        "datasets": [
            {"resolution": 512, "batch_size": "2", "subsets": [{"image_dir": "x", "num_repeat": 3}, {"is_reg": True}]},
            {"subsets": [{"image_dir": "y", "metadata_file": "m.json"}]},
        ],
        "dataset": [],
    }
    with pytest.raises(ConfigError) as info:
        specs_from_user_config(user)
    problems = info.value.problems
    assert "[general]: unknown key 'shuffle_captions'; did you mean 'shuffle_caption'?" in problems
    assert "[[datasets]] #1: 'batch_size' = '2' should be int" in problems
    assert "[[datasets]] #1 [[datasets.subsets]] #1: unknown key 'num_repeat'; did you mean 'num_repeats'?" in problems
    assert "[[datasets]] #1 [[datasets.subsets]] #2: 'image_dir' is required" in problems
    assert any("#2 [[datasets.subsets]] #1: fine-tuning subsets" in p for p in problems)
    assert any(p.startswith("top level: unknown key 'dataset'; did you mean 'datasets'") for p in problems)


def test_bool_is_not_an_int_and_unsupported_keys_refused() -> None:
    user = {"datasets": [{"resolution": 512, "subsets": [{"image_dir": "x", "keep_tokens": True, "enable_wildcard": True,
                                                         "token_warmup_step": 0}]}]}
    with pytest.raises(ConfigError) as info:
        specs_from_user_config(user)
    assert info.value.problems == [
        "[[datasets]] #1 [[datasets.subsets]] #1: 'keep_tokens' = True should be int",
        "[[datasets]] #1 [[datasets.subsets]] #1: 'enable_wildcard' is an sd-scripts option lorasmith does not support; remove it",
    ]


def test_syntax_error_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[datasets]\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_dataset_specs(bad)
