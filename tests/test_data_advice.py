"""Training arithmetic and instance-token advice (library.data.advice) and where it shows: plan, --print_plan."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

import train_network
from library.config import default_config
from library.data.advice import (
    batch_remainder_warning,
    instance_tokens,
    planned_steps,
    rare_tokens,
    steps_range_warning,
    suggest_repeats,
    token_warnings,
)
from library.data.prepare import prepare_data
from library.models.tokenizer import load_tokenizer


def test_batch_remainder_and_the_repeats_that_divide():
    assert batch_remainder_warning(22, 15, 2, 3) is None  # the guide: 660 items, batch 3
    w = batch_remainder_warning(22, 15, 1, 4)  # 330 items: a batch of 2 at the end
    assert "330 items per epoch" in w and "batch of 2" in w and "14 repeats make it divide" in w
    assert batch_remainder_warning(7, 3, 1, 1) is None


def test_steps_range_follows_the_guides_run():
    assert steps_range_warning(3300, "DAdaptAdam") is None
    assert steps_range_warning(1650, "Prodigy") is None and steps_range_warning(6600, "AdamW") is None
    low = steps_range_warning(800, "DAdaptAdam")
    assert "undertrained" in low and "1650–6600" in low and "no measured range" not in low
    high = steps_range_warning(9000, "AdamW8bit")
    assert "overtrained" in high and "for AdamW8bit no measured range is known" in high


def test_suggest_repeats_reproduces_the_guide():
    # 22 photos, reg balanced (× 2), batch 3, 10 epochs: 2,200 steps need 15 repeats (the guide's run).
    assert suggest_repeats(2200, 10, [15], [22], 3, 1, 2) == [15]
    assert planned_steps(10, 22 * 15, 2, 3, 1) == 2200
    assert suggest_repeats(1100, 10, [15], [22], 3, 1, 2) == [8]  # 7.5 rounds to 8 (banker's rounding)
    assert suggest_repeats(400, 2, [10, 5], [10, 10], 1, 1, 1) == [13, 7]  # ratios kept: 200 items per epoch


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_instance_tokens(tokenizer):
    assert token_warnings("ohwx", tokenizer) == []  # one rare token: id 47993
    (problem, fix), = token_warnings("woman", tokenizer)
    assert "common word" in problem and "id 2308" in problem and "ohwx" in fix
    (problem, _), = token_warnings("zwx", tokenizer)
    assert "splits into 2 CLIP tokens (z + wx)" in problem
    assert rare_tokens(tokenizer, 5) == ["nlwx", "ohwx", "nmwx", "wawx", "wiwx"]
    assert "ohwx" not in rare_tokens(tokenizer, 5, exclude=("ohwx",))
    assert all(len(tokenizer.tokenize(t)) == 1 for t in rare_tokens(tokenizer, 20))
    assert instance_tokens(["ohwx woman", "woman", None, "ohwx man", "john man"]) == ["ohwx", "john"]


def _folder(root: Path, name: str, n: int, size=(64, 64)) -> Path:
    sub = root / name
    sub.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", size, (i * 20, 0, 0)).save(sub / f"{i}.png")
    return root


def test_plan_carries_arithmetic_warnings(tmp_path):
    root = _folder(tmp_path / "img", "5_ohwx woman", 4)
    cfg = dataclasses.replace(default_config(), train_data_dir=str(root), resolution="64", train_batch_size=3,
                              max_train_epochs=2, target_steps=20)
    warnings = prepare_data(cfg).plan.warnings
    assert any("20 items per epoch (4 images × 5 repeats) is not a multiple of the batch size 3" in w for w in warnings)
    assert any("likely undertrained" in w for w in warnings)  # 20 × 2 = 40 image-repeats
    # 20 steps × batch 3 / 2 epochs = 30 items per epoch: 7.5 → 8 repeats → 2 × ceil(32 / 3) = 22 steps.
    assert any("use repeats 5_ohwx woman: 8 (gives 22 steps" in w for w in warnings)
    cfg = dataclasses.replace(cfg, max_train_epochs=None)
    assert any("set max_train_epochs" in w for w in prepare_data(cfg).plan.warnings)


def test_print_plan_warns_about_the_token(tmp_path, capsys):
    root = _folder(tmp_path / "img", "5_john man", 4)
    args = ["--pretrained_model_name_or_path", "tiny", "--train_data_dir", str(root), "--output_dir", str(tmp_path),
            "--resolution", "64", "--print_plan"]
    assert train_network.main(args) == 0
    out = capsys.readouterr().out
    assert "warning: instance token 'john' is a common word for CLIP" in out and "nlwx, ohwx" in out


def test_print_plan_shows_the_per_image_checks(tmp_path, capsys):
    """The plan carries `dataset check`'s per-image findings (faces aside), each naming the file."""
    import numpy as np

    sub = tmp_path / "img" / "5_ohwx shape"
    sub.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):  # fine detail at the sharpness scale (512 px short side), distinct: sharp, no duplicates
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(sub / f"sharp{i}.png")
    Image.new("RGB", (64, 64), (90, 90, 90)).save(sub / "flat.png")  # no detail at all: "blurry"
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(sub / "small.png")
    args = ["--pretrained_model_name_or_path", "tiny", "--train_data_dir", str(tmp_path / "img"),
            "--output_dir", str(tmp_path / "out"), "--resolution", "64", "--print_plan"]
    assert train_network.main(args) == 0
    out = capsys.readouterr().out
    assert "image checks (5 training images" in out
    assert "5_ohwx shape/flat.png: looks blurry" in out
    assert "5_ohwx shape/small.png: 48x48 is below the training resolution (64 px short side)" in out
    assert not any(f"sharp{i}.png" in out for i in range(3))
