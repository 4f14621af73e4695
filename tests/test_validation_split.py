"""--validation_split: which images are held out, reproducibly, never trained on; bad splits are named errors."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from library.config import TrainConfig
from library.data.folders import ImageEntry
from library.data.holdout import split_images
from library.data.plan import format_plan
from library.data.prepare import prepare_data
from library.errors import ConfigError


def entries(n: int) -> list[ImageEntry]:
    return [ImageEntry(Path(f"/d/{i:02d}.png"), "c", "file", (64, 64)) for i in range(n)]


def cfg(data: Path, **kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path="tiny", train_data_dir=str(data), caption_extension=".txt", resolution="64",
                enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128, train_batch_size=2, max_train_epochs=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 training images in one folder (2 repeats) and 4 regularization images."""
    from library.world.bucket_dataset import make_shapes_dataset

    root = tmp_path_factory.mktemp("split")
    make_shapes_dataset(root / "a", count=10)
    make_shapes_dataset(root / "r", count=4)
    train = root / "train"
    reg = root / "reg"
    shutil.move(str(next((root / "a").iterdir())), train / "2_ohwx shape")
    shutil.move(str(next((root / "r").iterdir())), reg / "1_shape")
    return root


def test_split_is_sd_scripts_seeded_shuffle_and_a_complement() -> None:
    images = entries(10)
    trained, held = split_images(images, 0.2, 42)
    expected = list(images)
    random.Random(42).shuffle(expected)  # sd-scripts: random.seed(validation_seed); random.shuffle(paths)
    assert trained == expected[:8] and held == expected[8:]
    assert split_images(images, 0.2, 42) == (trained, held)  # same seed, same split
    assert split_images(images, 0.2, 43)[1] != held
    # n=3, split 0.5: sd-scripts' two halves would share an image; ours never overlap
    t3, h3 = split_images(entries(3), 0.5, 1)
    assert len(t3) == 2 and len(h3) == 1 and not set(t3) & set(h3)


def test_prepare_holds_out_train_images_only_and_plan_says_so(data: Path) -> None:
    prepared = prepare_data(cfg(data / "train", reg_data_dir=str(data / "reg"), validation_split=0.3))
    trained = {it.image.path for lay in prepared.layouts for it in lay.items if not it.is_reg}
    held = {it.image.path for lay in prepared.validation.layouts for it in lay.items}
    assert len(trained) == 7 and len(held) == 3 and not trained & held
    assert all(not it.is_reg for lay in prepared.validation.layouts for it in lay.items)  # reg images never held out
    assert sum(1 for lay in prepared.layouts for it in lay.items if it.is_reg) == 4
    assert all(it.repeats == 1 for lay in prepared.validation.layouts for it in lay.items)
    assert prepared.plan.train_items == 14  # 7 images x 2 repeats
    assert prepared.plan.held_out_images == 3
    assert "validation images held out (not trained on): 3" in format_plan(prepared.plan)
    again = prepare_data(cfg(data / "train", reg_data_dir=str(data / "reg"), validation_split=0.3))
    assert {it.image.path for lay in again.validation.layouts for it in lay.items} == held
    other = prepare_data(cfg(data / "train", validation_split=0.3, validation_seed=12345))
    assert {it.image.path for lay in other.validation.layouts for it in lay.items} != held


def test_validation_seed_defaults_to_training_seed(data: Path) -> None:
    by_seed = prepare_data(cfg(data / "train", validation_split=0.3, seed=77))
    explicit = prepare_data(cfg(data / "train", validation_split=0.3, seed=3, validation_seed=77))
    paths = lambda p: sorted(it.image.path for lay in p.validation.layouts for it in lay.items)  # noqa: E731
    assert paths(by_seed) == paths(explicit)


def test_no_split_means_no_validation(data: Path) -> None:
    prepared = prepare_data(cfg(data / "train"))
    assert prepared.validation is None and prepared.plan.held_out_images == 0
    assert "held out" not in format_plan(prepared.plan)
    small = prepare_data(cfg(data / "train", validation_split=0.05))  # 10 images: ceil(9.5) = 10 trained
    assert small.validation is None
    assert any(w.startswith("validation_split holds out no image") for w in small.plan.warnings)


@pytest.mark.parametrize("split", [1.0, -0.1, 1.5])
def test_split_outside_0_1_is_a_named_error(data: Path, split: float) -> None:
    with pytest.raises(ConfigError, match=f"validation_split: {split} is not a fraction from 0 up to below 1"):
        prepare_data(cfg(data / "train", validation_split=split))


def test_every_folder_keeps_a_training_image_even_at_a_high_split() -> None:
    for n in (1, 2, 3, 7):
        trained, held = split_images(entries(n), 0.99, 0)
        assert len(trained) == 1 and len(held) == n - 1  # ceil(n * 0.01) = 1


def test_dataset_toml_keys_per_dataset(data: Path, tmp_path: Path) -> None:
    toml = tmp_path / "d.toml"
    toml.write_text(f"""[general]
resolution = 64
caption_extension = ".txt"
[[datasets]]
validation_split = 0.2
validation_seed = 5
[[datasets.subsets]]
image_dir = "{(data / 'train' / '2_ohwx shape').as_posix()}"
num_repeats = 2
""")
    prepared = prepare_data(TrainConfig(pretrained_model_name_or_path="tiny", dataset_config=str(toml), seed=3, max_train_epochs=1))
    assert prepared.plan.held_out_images == 2
    bad = tmp_path / "bad.toml"
    bad.write_text(toml.read_text().replace("validation_split = 0.2", "validation_split = 1.0"))
    with pytest.raises(ConfigError, match="validation_split: 1.0 is not a fraction"):
        prepare_data(TrainConfig(pretrained_model_name_or_path="tiny", dataset_config=str(bad), seed=3))
