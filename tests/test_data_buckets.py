"""Bucket geometry against hand-computed values, and the sd-scripts fixture's 40 batches."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from library.data.buckets import (
    BucketGeometry, BucketSelector, cover_size, crop_ltrb, make_bucket_resolutions, select_no_upscale, select_predefined,
)
from library.data.folders import scan_datasets, subsets_from_dirs
from library.data.layout import build_layout, epoch_batches
from library.data.plan import dataset_dirs_info, dataset_metadata, make_plan, tag_frequency
from library.data.specs import DatasetSpec, SubsetSpec, parse_resolution

# Computed by hand: max area 512*512; for each width w in 256..1024 step 64 the height is
# min(1024, (262144 // w) // 64 * 64), both orientations kept, plus 512x512.
SD15_BUCKETS = [
    (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576), (512, 512),
    (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256),
]


def test_sd15_bucket_list() -> None:
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == SD15_BUCKETS


def test_tiny_bucket_list() -> None:
    # 128x128 area 16384: w=64→h=256, w=128→128, w=192→64 (16384//192=85→64), w=256→64.
    assert make_bucket_resolutions((128, 128), 64, 256, 64) == [(64, 192), (64, 256), (128, 128), (192, 64), (256, 64)]


def test_non_square_resolution_bucket_list() -> None:
    # 768x512 area 393216: square side floor(627.06/64)*64 = 576; w=512 → 768//64*64 = 768 → (512,768),(768,512).
    resos = make_bucket_resolutions((768, 512), 256, 1024, 64)
    assert (576, 576) in resos and (512, 768) in resos and (768, 512) in resos
    assert all(w * h <= 768 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in resos)


def test_nearest_aspect_assignment_and_cover_resize() -> None:
    # 1000x750 (ar 1.333): nearest is 576x448 (1.286); cover: scale 448/750 → 597.3 → 597 wide.
    choice = select_predefined((1000, 750), SD15_BUCKETS)
    assert choice.bucket == (576, 448)
    assert choice.resized_size == (597, 448)
    assert choice.ar_error == pytest.approx(576 / 448 - 1000 / 750)
    # An exact bucket size keeps its size; a portrait 3:4 goes to 448x576.
    assert select_predefined((640, 384), SD15_BUCKETS).resized_size == (640, 384)
    assert select_predefined((600, 800), SD15_BUCKETS).bucket == (448, 576)
    assert cover_size((600, 800), (448, 576)) == (448, 597)


def test_bucket_no_upscale() -> None:
    small = select_no_upscale((300, 200), 512 * 512, 64)
    assert small.bucket == (256, 192) and small.resized_size == (300, 200)
    # 2000x1000, aspect 2: width-rounded 704x320 (ar 2.2) loses to height-rounded 640x320 (ar 2.0).
    big = select_no_upscale((2000, 1000), 512 * 512, 64)
    assert big.resized_size == (640, 320) and big.bucket == (640, 320)


def test_no_buckets_single_resolution() -> None:
    sel = BucketSelector(BucketGeometry((512, 512), enable_bucket=False))
    choice = sel.select((800, 600))
    assert choice.bucket == (512, 512) and choice.resized_size == (683, 512)


def test_crop_ltrb_matches_sd_scripts_formula() -> None:
    # 1000x750 in 576x448: width matches, height 576 / (4/3) = 432, top (448 - 432) // 2 = 8.
    assert crop_ltrb((576, 448), (1000, 750)) == pytest.approx((0, 8.0, 576, 440.0))
    left, top, right, bottom = crop_ltrb((512, 512), (1024, 512))
    assert (left, top, right, bottom) == (0, 128.0, 512, 384.0)


def test_parse_resolution() -> None:
    assert parse_resolution("512") == (512, 512)
    assert parse_resolution("512,768") == (512, 768)
    with pytest.raises(Exception, match="resolution"):
        parse_resolution("big")


def make_fixture_like_dataset(root: Path) -> Path:
    """One folder '10_ohwx shape': 6 square and 2 3:1 images with .txt captions, like the sd-scripts run."""
    folder = root / "10_ohwx shape"
    folder.mkdir(parents=True)
    shapes = ["circle", "square", "triangle", "circle", "square", "circle", "square", "triangle"]
    for i in range(8):
        size = (768, 256) if i >= 6 else (512 + 16 * i, 512 + 16 * i)
        Image.new("RGB", size, (40 * i, 90, 160)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"ohwx shape, {shapes[i]}, solid color, simple background\n", encoding="utf-8")
    return root


def fixture_layout(tmp_path: Path):
    root = make_fixture_like_dataset(tmp_path / "train")
    subsets, problems = subsets_from_dirs(root, None, SubsetSpec(Path("."), caption_extension=".txt"))
    spec = DatasetSpec(tuple(subsets), BucketGeometry((128, 128), True, 64, 256, 64), batch_size=2)
    return build_layout(scan_datasets([spec], False, problems).datasets[0])


def test_fixture_batches_and_bucket_info(tmp_path: Path, sdscripts_lora_dir: Path) -> None:
    layout = fixture_layout(tmp_path)
    meta = json.loads((sdscripts_lora_dir / "metadata.json").read_text())["tinylora.safetensors"]["metadata"]
    assert layout.batch_count == int(meta["ss_num_batches_per_epoch"]) == 40
    assert json.loads(json.dumps(layout.bucket_info())) == json.loads(meta["ss_bucket_info"])
    train_dirs, reg_dirs = dataset_dirs_info([layout])
    assert train_dirs == json.loads(meta["ss_dataset_dirs"]) and reg_dirs == {}
    assert layout.num_train_images == int(meta["ss_num_train_images"]) == 80
    plan = make_plan([layout], max_train_epochs=3)
    assert plan.total_steps == int(meta["ss_max_train_steps"]) == 120
    ours = dataset_metadata([layout])
    same = ["ss_num_train_images", "ss_num_reg_images", "ss_num_batches_per_epoch", "ss_resolution", "ss_enable_bucket",
            "ss_min_bucket_reso", "ss_max_bucket_reso", "ss_bucket_no_upscale", "ss_dataset_dirs", "ss_reg_dataset_dirs",
            "ss_bucket_info", "ss_tag_frequency"]
    assert {k: ours[k] for k in same} == {k: meta[k] for k in same}


def test_tag_frequency_format(tmp_path: Path) -> None:
    freq = tag_frequency([fixture_layout(tmp_path)])
    assert freq == {"10_ohwx shape": {"ohwx shape": 8, "circle": 3, "square": 3, "triangle": 2, "solid color": 8, "simple background": 8}}


def test_epoch_batches_one_bucket_each_and_reshuffled(tmp_path: Path) -> None:
    layout = fixture_layout(tmp_path)
    e1, e1_again, e2 = (epoch_batches([layout], 42, e) for e in (1, 1, 2))
    assert e1 == e1_again and e1 != e2
    assert len(e1) == 40
    for batch in e1:
        assert {layout.items[k].bucket for k in batch.items} == {batch.bucket}
    # every item appears exactly `repeats` times per epoch
    seen = sorted(k for b in e1 for k in b.items)
    assert seen == sorted(k for k, it in enumerate(layout.items) for _ in range(it.repeats))
