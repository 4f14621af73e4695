"""Regularization balancing (fewer / equal / more reg images), step math, plan and its warnings."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from library.data.balance import balance_reg_repeats, steps_per_epoch, total_steps
from library.data.plan import format_plan
from library.data.prepare import prepare_data


def test_fewer_reg_images_are_repeated_round_robin() -> None:
    # 10 train items, 3 reg images with 1 repeat: pass 1 gives 3, then +1 each round-robin: 4,3,3.
    assert balance_reg_repeats(10, [1, 1, 1]) == [4, 3, 3]


def test_equal_reg_images_used_once() -> None:
    assert balance_reg_repeats(4, [1, 1, 1, 1]) == [1, 1, 1, 1]


def test_more_reg_images_leave_extras_unused() -> None:
    assert balance_reg_repeats(3, [1, 1, 1, 1, 1]) == [1, 1, 1, 0, 0]


def test_first_pass_overshoot_kept_like_sd_scripts() -> None:
    # reg folder with 3 repeats, 10 train items: 3+3+3+3 = 12 ≥ 10 after four images.
    assert balance_reg_repeats(10, [3, 3, 3, 3, 3]) == [3, 3, 3, 3, 0]


def test_no_reg_or_no_train() -> None:
    assert balance_reg_repeats(10, []) == []
    assert balance_reg_repeats(0, [1, 1]) == [0, 0]


def test_step_math() -> None:
    assert steps_per_epoch(41, 1) == 41
    assert steps_per_epoch(41, 4) == 11
    assert total_steps(11, 3, 1600) == (33, 3)
    assert total_steps(11, None, 100) == (100, 10)


class Cfg:
    def __init__(self, **kw):
        self.__dict__.update({"resolution": "64", "caption_extension": ".txt"}, **kw)


def make(folder: Path, n: int, size=(64, 64)) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", size, (i * 20, 0, 0)).save(folder / f"{i:02d}.png")


def test_plan_with_reg_doubles_items_per_epoch(tmp_path: Path) -> None:
    make(tmp_path / "train" / "10_ohwx man", 12)
    make(tmp_path / "reg" / "1_man", 50)
    plan = prepare_data(Cfg(train_data_dir=tmp_path / "train", reg_data_dir=tmp_path / "reg", train_batch_size=3,
                            max_train_epochs=10)).plan
    assert plan.train_items == 120 and plan.reg_items == 120 and plan.items_per_epoch == 240
    assert plan.batches_per_epoch == 80 and plan.steps_per_epoch == 80 and plan.total_steps == 800
    reg_row = plan.folders[1]
    assert (reg_row.folder, reg_row.images, reg_row.images_used, reg_row.items) == ("1_man", 50, 50, 120)
    assert any("80 steps per epoch but only 50 regularization images" in w for w in plan.warnings)
    text = format_plan(plan)
    assert "10_ohwx man" in text and "total optimizer steps:                       800" in text


def test_reg_loss_weight_and_gradient_accumulation(tmp_path: Path) -> None:
    make(tmp_path / "train" / "2_a", 10)
    make(tmp_path / "reg" / "1_b", 40)
    prepared = prepare_data(Cfg(train_data_dir=tmp_path / "train", reg_data_dir=tmp_path / "reg",
                                gradient_accumulation_steps=4, max_train_steps=50, prior_loss_weight=0.5))
    plan = prepared.plan
    assert plan.reg_items == 20 and plan.batches_per_epoch == 40 and plan.steps_per_epoch == 10
    assert plan.total_steps == 50 and plan.epochs == 5
    assert prepared.layouts[0].spec.prior_loss_weight == 0.5
    assert not any("regularization images" in w for w in plan.warnings)
    assert plan.to_dict()["folders"][1]["images_used"] == 20


def test_warnings_small_and_non_square_without_buckets(tmp_path: Path) -> None:
    make(tmp_path / "train" / "1_a", 3, size=(48, 64))
    plan = prepare_data(Cfg(train_data_dir=tmp_path / "train", max_train_epochs=1)).plan
    joined = "\n".join(plan.warnings)
    assert "only 3 training images" in joined
    assert "3 image(s) smaller than their training size" in joined
    assert "do not have the training aspect ratio" in joined and "00.png (48x64)" in joined
