"""--masked_loss: masks from alpha or a mask folder, same geometry as the image, cached with the latents, in the loss."""
from __future__ import annotations

import dataclasses
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from library.config import TrainConfig
from library.data.latent_cache import LatentRequest, cache_file, cache_latents
from library.data.masks import ALPHA, item_pixels_and_mask, load_mask
from library.data.prepare import build_dataset, prepare_data
from library.errors import ConfigError, DatasetError
from library.models.builtin import build_tiny_bundle
from library.training.loss import per_sample_loss
from library.training.trainer import train


def _marked(path: Path, size=(96, 64), box=(10, 8, 40, 30), alpha: bool = False) -> None:
    """Grey image with a white box; with `alpha` the box is the only opaque part."""
    arr = np.full((size[1], size[0], 4 if alpha else 3), 90, np.uint8)
    arr[box[1]:box[3], box[0]:box[2], :3] = 255
    if alpha:
        arr[..., 3] = 0
        arr[box[1]:box[3], box[0]:box[2], 3] = 255
    Image.fromarray(arr).save(path)


def test_mask_follows_resize_crop_and_flip(tmp_path):
    _marked(tmp_path / "a.png", alpha=True)
    # 96x64 covers a 64x64 bucket at 96x64 and is cropped at a random offset, then flipped.
    for seed in range(4):
        rng = random.Random(seed)
        pixels, mask = item_pixels_and_mask(tmp_path / "a.png", ALPHA, (96, 64), (64, 64), (96, 64),
                                            random_crop=True, flip=seed % 2 == 1, rng=rng)
        white = (pixels[0] > 0.99).float()  # where the box landed in the pixels
        assert white.sum() > 0 and torch.equal(white, mask[0])
    # Resized (shrunk to 48x32 over a 32x32 bucket): the mask is blurred exactly as the R channel.
    pixels, mask = item_pixels_and_mask(tmp_path / "a.png", ALPHA, (96, 64), (32, 32), (48, 32), flip=True)
    grey_free = (pixels[0] + 1) / 2  # R channel in [0, 1]: 90/255 outside, 1 inside, blended at edges
    inside = mask[0] > 0
    assert torch.allclose(mask[0][~inside], torch.zeros(1)) and inside.sum() > 0
    assert torch.all((grey_free[inside] > 90 / 255))


def test_mask_file_uses_red_channel_and_must_match_size(tmp_path):
    _marked(tmp_path / "a.png")
    Image.fromarray(np.dstack([np.full((64, 96), 127, np.uint8), np.zeros((64, 96), np.uint8), np.full((64, 96), 255, np.uint8)])).save(tmp_path / "m.png")
    assert load_mask(tmp_path / "m.png", tmp_path / "a.png").max() == 127
    _, mask = item_pixels_and_mask(tmp_path / "a.png", tmp_path / "m.png", (96, 64), (64, 64), (96, 64))
    assert torch.allclose(mask, torch.full_like(mask, 127 / 255))
    with pytest.raises(DatasetError, match="mask is 96x64 but the image is 50x64"):
        item_pixels_and_mask(tmp_path / "a.png", tmp_path / "m.png", (50, 64), (64, 64), (96, 64))


def test_half_mask_zeroes_the_gradient_of_the_masked_half():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    target = torch.randn(2, 4, 8, 8, generator=g)
    mask = torch.ones(2, 1, 64, 64)
    mask[..., :32] = 0  # left half of the pixels → left 4 latent columns
    per_sample_loss(pred, target, "l2", None, mask).sum().backward()
    masked = pred.grad.clone()
    pred.grad = None
    per_sample_loss(pred, target, "l2").sum().backward()
    assert torch.all(masked[..., :4] == 0)
    assert torch.equal(masked[..., 4:], pred.grad[..., 4:])  # the learned half is untouched
    assert torch.all(pred.grad[..., :4] != 0)


def test_all_ones_mask_loss_is_bit_identical():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(3, 4, 8, 12, generator=g), torch.randn(3, 4, 8, 12, generator=g)
    for loss_type in ("l2", "l1"):
        assert torch.equal(per_sample_loss(pred, target, loss_type, None, torch.ones(3, 1, 64, 96)),
                           per_sample_loss(pred, target, loss_type))


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path="tiny", train_data_dir=str(data), output_dir=str(out), output_name="t",
                caption_extension=".txt", resolution="64", enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128,
                train_batch_size=2, max_train_epochs=1, seed=3, learning_rate=1e-3, flip_aug=True)
    base.update(kw)
    return TrainConfig(**base)


def _white_masks(data: Path, masks: Path) -> None:
    for sub in data.iterdir():
        (masks / sub.name).mkdir(parents=True)
        for img in sub.glob("*.png"):
            Image.new("L", Image.open(img).size, 255).save(masks / sub.name / img.name)


@pytest.mark.parametrize("cache", [False, True])
def test_all_ones_mask_trains_bit_for_bit_like_no_mask(shapes_data, tmp_path, cache):
    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    _white_masks(data, tmp_path / "masks")
    plain = train(_cfg(data, tmp_path / "a", cache_latents=cache))
    masked = train(_cfg(data, tmp_path / "b", cache_latents=cache, masked_loss=True, conditioning_data_dir=str(tmp_path / "masks")))

    def weights(out):
        with safe_open(str(out / "t.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert plain is not None and masked is not None
    if not cache:  # and the mask does reach the loss: half-black masks train another LoRA
        for m in (tmp_path / "masks").rglob("*.png"):
            arr = np.array(Image.open(m))
            arr[:, : arr.shape[1] // 2] = 0
            Image.fromarray(arr).save(m)
        train(_cfg(data, tmp_path / "c", masked_loss=True, conditioning_data_dir=str(tmp_path / "masks")))
        c = weights(tmp_path / "c")
        assert not all(torch.equal(a[k], c[k]) for k in a)


def test_batches_carry_masks_cached_or_not(shapes_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    masks = tmp_path / "masks"
    _white_masks(data, masks)
    first = sorted((masks / "1_ohwx shape").glob("*.png"))[0]
    arr = np.full(Image.open(first).size[::-1], 255, np.uint8)
    arr[:, : arr.shape[1] // 2] = 0
    Image.fromarray(arr).save(first)
    cfg = _cfg(data, tmp_path / "o", masked_loss=True, conditioning_data_dir=str(masks))
    prepared = prepare_data(cfg)
    live = build_dataset(prepared, cfg, seed=5)
    vae = build_tiny_bundle().vae
    cached = build_dataset(prepared, dataclasses.replace(cfg, cache_latents=True), seed=5, vae=vae, progress=False)
    for i in range(len(live)):
        b1, b2 = live[i], cached[i]
        assert b1["masks"].shape[1] == 1 and b1["masks"].shape[2:] == b1["images"].shape[2:]
        assert torch.equal(b1["masks"], b2["masks"]), i  # same crop and flip whether cached or not
    halves = [b["masks"][j] for b in (live[i] for i in range(len(live))) for j in range(len(b["masks"])) if b["masks"][j].min() == 0]
    assert halves and all(m.mean() == pytest.approx(0.5, abs=0.02) for m in halves)


def test_cache_key_changes_when_the_mask_changes(tmp_path):
    vae = build_tiny_bundle().vae
    _marked(tmp_path / "a.png", size=(64, 64))
    mask = tmp_path / "m.png"
    Image.new("L", (64, 64), 255).save(mask)
    req = LatentRequest("k", tmp_path / "a.png", (64, 64), (64, 64), mask, (64, 64))
    first = cache_latents([req], vae, to_disk=True, progress=False)["k"]
    path = cache_file(tmp_path / "a.png", (64, 64))
    stamp = path.stat().st_mtime_ns
    again = cache_latents([req], vae, to_disk=True, progress=False)["k"]
    assert path.stat().st_mtime_ns == stamp and torch.equal(again.mask, first.mask)  # reused
    Image.new("L", (64, 64), 0).save(mask)
    changed = cache_latents([req], vae, to_disk=True, progress=False)["k"]
    assert int(changed.mask.max()) == 0 and int(first.mask.min()) == 255
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["mask"].startswith("file:") and int(f.get_tensor("mask").max()) == 0
    unmasked = cache_latents([dataclasses.replace(req, mask=None)], vae, to_disk=True, progress=False)["k"]
    assert unmasked.mask is None and torch.equal(unmasked.latents, first.latents)


def test_mask_options_are_checked(shapes_data, tmp_path):
    with pytest.raises(ConfigError, match="masked_loss: no masks given"):
        prepare_data(_cfg(shapes_data, tmp_path, masked_loss=True))
    with pytest.raises(ConfigError, match="only used with masked_loss"):
        prepare_data(_cfg(shapes_data, tmp_path, alpha_mask=True))
    (tmp_path / "masks" / "1_ohwx shape").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        prepare_data(_cfg(shapes_data, tmp_path, masked_loss=True, conditioning_data_dir=str(tmp_path / "masks")))
    assert len(err.value.problems) == 4 and "no mask" in err.value.problems[0]
