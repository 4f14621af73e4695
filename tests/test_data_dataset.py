"""Batches from the torch dataset: shapes, one bucket per batch, loss weights, determinism, resume, workers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from library.data.latent_cache import CachedLatents
from library.data.prepare import build_dataset, prepare_data
from library.data.dataset import LoraDataset, make_dataloader
from library.errors import ConfigError


class Cfg:
    def __init__(self, **kw):
        self.__dict__.update({"resolution": "96", "caption_extension": ".txt", "enable_bucket": True,
                              "min_bucket_reso": 64, "max_bucket_reso": 128, "bucket_reso_steps": 64}, **kw)


def make_data(root: Path) -> Path:
    train = root / "train" / "2_ohwx cat"
    train.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (i * 60, 100, 50)).save(train / f"sq{i}.png")
        (train / f"sq{i}.txt").write_text(f"ohwx cat, tag{i}, red, blue")
    wide = Image.new("RGB", (128, 64), (250, 0, 0))
    wide.paste((0, 0, 250), (64, 0, 128, 64))  # left half red, right half blue
    wide.save(train / "wide.png")
    reg = root / "reg" / "1_cat"
    reg.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (64, 64), (200, 200, i * 50)).save(reg / f"r{i}.png")
    return root


@pytest.fixture
def prepared(tmp_path: Path):
    root = make_data(tmp_path)
    cfg = Cfg(train_data_dir=root / "train", reg_data_dir=root / "reg", train_batch_size=2, shuffle_caption=True,
              keep_tokens=1, flip_aug=True, prior_loss_weight=0.25)
    return cfg, prepare_data(cfg)


def test_batches_pixels_weights_and_buckets(prepared) -> None:
    cfg, data = prepared
    ds = build_dataset(data, cfg, seed=3)
    # 8 train items (4 images x 2) + 8 reg items (3 reg images balanced to 3,3,2) → buckets 64x64: 14, 128x64: 2
    assert [(reso, len(ids)) for reso, ids in data.layouts[0].buckets] == [((64, 64), 14), ((128, 64), 2)]
    assert len(ds) == 8 == data.plan.batches_per_epoch
    ds.set_epoch(1)
    batches = [ds[i] for i in range(len(ds))]
    for b in batches:
        w, h = b["bucket"]
        assert b["images"].shape == (len(b["captions"]), 3, h, w) and b["latents"] is None
        assert b["images"].min() >= -1.0 and b["images"].max() <= 1.0
        assert b["loss_weights"].tolist() == [0.25 if r else 1.0 for r in b["is_reg"]]
        assert len(b["image_paths"]) == len(b["flipped"]) == len(b["captions"])
    paths = [p for b in batches for p in b["image_paths"]]
    assert sum("reg" in p for p in paths) == 8 and len(paths) == 16
    captions = [c for b in batches for c, r in zip(b["captions"], b["is_reg"]) if not r and "tag" in c]
    assert all(c.startswith("ohwx cat, ") for c in captions)


def test_same_seed_same_batches_new_epoch_new_order(prepared) -> None:
    cfg, data = prepared
    a, b = build_dataset(data, cfg, seed=3), build_dataset(data, cfg, seed=3)
    first = [a[(1, i)] for i in range(len(a))]
    again = [b[(1, i)] for i in range(len(b))]
    for x, y in zip(first, again):
        assert x["image_paths"] == y["image_paths"] and x["captions"] == y["captions"] and x["flipped"] == y["flipped"]
        assert torch.equal(x["images"], y["images"])
    second = [a[(2, i)]["image_paths"] for i in range(len(a))]
    assert second != [x["image_paths"] for x in first]


def test_flip_really_mirrors(prepared) -> None:
    cfg, data = prepared
    ds = build_dataset(data, cfg, seed=0)
    left_red = {}
    for epoch in range(1, 7):
        for i in range(len(ds)):
            b = ds[(epoch, i)]
            for j, path in enumerate(b["image_paths"]):
                if path.endswith("wide.png"):
                    pixel = b["images"][j, :, 32, 2]
                    left_red[b["flipped"][j]] = bool(pixel[0] > 0.9 and pixel[2] < -0.9)
    assert left_red == {False: True, True: False}


def test_resume_mid_epoch_and_dataloader_workers(prepared) -> None:
    cfg, data = prepared
    ds = build_dataset(data, cfg, seed=5)
    ds.set_epoch(2)
    full = [b["image_paths"] for b in make_dataloader(ds)]
    ds.set_epoch(2, start_batch=5)
    assert [b["image_paths"] for b in make_dataloader(ds)] == full[5:]
    restored = build_dataset(data, cfg, seed=0)
    restored.load_state_dict(ds.state_dict())
    assert [b["image_paths"] for b in make_dataloader(restored)] == full[5:]
    ds.set_epoch(2)
    loader = make_dataloader(ds, num_workers=1, persistent_workers=True)
    assert [b["image_paths"] for b in loader] == full
    ds.set_epoch(3)
    assert [b["image_paths"] for b in loader] == [ds[(3, i)]["image_paths"] for i in range(len(ds))]


def test_cached_latents_and_text_outputs_are_used(prepared) -> None:
    cfg, data = prepared
    lay = data.layouts[0]
    latents = {(0, k): CachedLatents(torch.full((4, it.bucket[1] // 8, it.bucket[0] // 8), float(k)),
                                     torch.full((4, it.bucket[1] // 8, it.bucket[0] // 8), -float(k)))
               for k, it in enumerate(lay.items)}
    ds = LoraDataset(data.layouts, seed=1, latents=latents)
    b = ds[(1, 0)]
    assert b["images"] is None and b["latents"].shape[1:] == (4, b["bucket"][1] // 8, b["bucket"][0] // 8)
    for row, flipped, path in zip(b["latents"], b["flipped"], b["image_paths"]):
        k = next(k for k, it in enumerate(lay.items) if str(it.image.path) == path)
        assert row.flatten()[0].item() == (-float(k) if flipped else float(k))


def test_cache_conflicts_are_config_errors(tmp_path: Path) -> None:
    root = make_data(tmp_path)
    with pytest.raises(ConfigError) as info:
        prepare_data(Cfg(train_data_dir=root / "train", cache_latents=True, color_aug=True, random_crop=True,
                         cache_text_encoder_outputs=True, shuffle_caption=True))
    text = str(info.value)
    assert "color_aug" in text and "random_crop" in text and "cache_text_encoder_outputs" in text


def test_fixed_captions_for_text_encoder_cache(tmp_path: Path) -> None:
    root = make_data(tmp_path)
    cfg = Cfg(train_data_dir=root / "train", caption_prefix="photo of")
    ds = build_dataset(prepare_data(cfg), cfg, seed=0)
    assert sorted(set(ds.fixed_captions())) == sorted(
        ["photo of ohwx cat", "photo of ohwx cat, tag0, red, blue", "photo of ohwx cat, tag1, red, blue", "photo of ohwx cat, tag2, red, blue"])
