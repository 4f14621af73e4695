"""A trained LoRA's dataset `ss_*` strings are exactly what library.data's planner produces.

The planner's `dataset_metadata` is checked against a real sd-scripts run in
test_data_buckets.py; here the same strings must come out of a training run, with a
regularization folder and buckets so that every field has something to say.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from library.config import TrainConfig
from library.data import prepare_data
from library.data.plan import dataset_metadata
from library.lora.metadata import build_metadata, dataset_fields
from library.world.bucket_dataset import FOLDER, make_shapes_dataset
from library.training.trainer import train

DATASET_KEYS = (
    "ss_num_train_images", "ss_num_reg_images", "ss_num_validation_images", "ss_num_batches_per_epoch",
    "ss_resolution", "ss_enable_bucket", "ss_min_bucket_reso", "ss_max_bucket_reso", "ss_bucket_no_upscale",
    "ss_dataset_dirs", "ss_reg_dataset_dirs", "ss_tag_frequency", "ss_bucket_info",
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Train: `1_ohwx shape` (4 images, 2 buckets). Reg: `2_shape` (3 images x 2 repeats = 6)."""
    train_root = make_shapes_dataset(tmp_path_factory.mktemp("train"), count=4)
    (train_root / FOLDER).rename(train_root / "1_ohwx shape")
    reg_root = make_shapes_dataset(tmp_path_factory.mktemp("reg"), count=3, seed=1)
    (reg_root / FOLDER).rename(reg_root / "2_shape")
    return train_root, reg_root


def _config(train_root: Path, reg_root: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        pretrained_model_name_or_path="tiny", train_data_dir=str(train_root), reg_data_dir=str(reg_root),
        output_dir=str(out), output_name="strings", caption_extension=".txt", resolution="128",
        enable_bucket=True, min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=64,
        train_batch_size=2, max_train_steps=1, network_dim=2, network_alpha=1.0, optimizer_type="AdamW",
        learning_rate=1e-4, seed=3,
    )


def test_trained_lora_carries_the_planners_dataset_strings(folders, tmp_path):
    cfg = _config(*folders, tmp_path / "out")
    expected = dataset_metadata(prepare_data(cfg).layouts)
    result = train(cfg)
    with safe_open(str(result.final_file), "pt") as f:
        written = f.metadata()
    assert {k: written[k] for k in DATASET_KEYS} == {k: expected[k] for k in DATASET_KEYS}
    # The strings say something: both folders, both buckets, sd-scripts' reg count (repeats x
    # images = 6, not the 4 that balancing uses per epoch), and per-folder tag counts.
    assert json.loads(written["ss_dataset_dirs"]) == {"1_ohwx shape": {"n_repeats": 1, "img_count": 4}}
    assert json.loads(written["ss_reg_dataset_dirs"]) == {"2_shape": {"n_repeats": 2, "img_count": 3}}
    assert written["ss_num_train_images"] == "4" and written["ss_num_reg_images"] == "6"
    buckets = json.loads(written["ss_bucket_info"])["buckets"]
    assert [b["resolution"] for b in buckets.values()] == [[128, 128], [192, 64]]
    tags = json.loads(written["ss_tag_frequency"])
    assert tags["1_ohwx shape"]["ohwx shape"] == 4 and tags["2_shape"]["solid color"] == 3


def test_bucket_limits_read_none_without_buckets(folders, tmp_path):
    """sd-scripts' dataset resets the limits when bucketing is off; both paths say "None"."""
    cfg = _config(*folders, tmp_path)
    cfg.enable_bucket = False
    planned = dataset_metadata(prepare_data(cfg).layouts)
    assert (planned["ss_enable_bucket"], planned["ss_min_bucket_reso"], planned["ss_max_bucket_reso"]) == (
        "False", "None", "None")
    assert planned["ss_bucket_info"] == "null"
    # build_metadata without dataset bucket facts falls back to the config, through the same formatter.
    md = build_metadata({"enable_bucket": False, "min_bucket_reso": 64, "max_bucket_reso": 256, "resolution": "128"},
                        dataset={}, model={}, optimizer="x", session_id=1, training_started_at=0.0, epoch=1,
                        steps=1, num_epochs=1, max_train_steps=1, num_batches_per_epoch=1)
    assert (md["ss_min_bucket_reso"], md["ss_max_bucket_reso"], md["ss_resolution"]) == ("None", "None", "(128, 128)")
    assert dataset_fields({"enable_bucket": True, "min_bucket_reso": 64, "resolution": (64, 96)})[
        "ss_min_bucket_reso"] == "64"

