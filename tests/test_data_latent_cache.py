"""Latent cache: RAM and disk, reuse only while image, VAE and bucket match; damaged files recomputed."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from library.data.latent_cache import (
    LatentRequest, cache_file, cache_latents, expected_metadata, file_sha256, read_cache, vae_fingerprint,
)

builtin = pytest.importorskip("library.models.builtin")


@pytest.fixture(scope="module")
def vae():
    return builtin.build_tiny_bundle().vae


def make_images(folder: Path) -> list[LatentRequest]:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (80, 64), (250, 30, 30)).save(folder / "a.png")
    Image.new("RGB", (64, 64), (30, 250, 30)).save(folder / "b.png")
    return [LatentRequest("a", folder / "a.png", (64, 64), (80, 64)), LatentRequest("b", folder / "b.png", (64, 64), (64, 64))]


def test_ram_cache_shapes_flip_and_determinism(tmp_path: Path, vae) -> None:
    reqs = make_images(tmp_path)
    one = cache_latents(reqs, vae, flip_aug=True, vae_batch_size=2, progress=False)
    same = cache_latents(reqs, vae, flip_aug=True, vae_batch_size=2, progress=False)
    two = cache_latents(reqs[::-1], vae, flip_aug=True, vae_batch_size=1, progress=False)
    assert one["a"].latents.shape == (4, 8, 8) and one["a"].flipped.shape == (4, 8, 8)
    assert torch.equal(one["a"].latents, same["a"].latents)
    # the noise is per image, so only conv batching rounding differs between batch sizes and orders
    assert torch.allclose(one["a"].latents, two["a"].latents, atol=1e-5)
    assert not torch.equal(one["a"].latents, one["a"].flipped)
    assert not any(tmp_path.glob("*.safetensors"))  # RAM only: nothing written


def test_disk_cache_reused_then_invalidated_when_image_changes(tmp_path: Path, vae, monkeypatch) -> None:
    reqs = make_images(tmp_path)
    first = cache_latents(reqs, vae, to_disk=True, progress=False)
    path_a = cache_file(reqs[0].path, (64, 64))
    assert path_a.name == "a_0064x0064_lorasmith.safetensors" and path_a.is_file()
    calls = []
    import library.data.latent_cache as lc

    real = lc._compute
    monkeypatch.setattr(lc, "_compute", lambda vae_, group, flip: calls.append([r.key for r, _ in group]) or real(vae_, group, flip))
    again = cache_latents(reqs, vae, to_disk=True, progress=False)
    assert calls == [] and torch.equal(again["a"].latents, first["a"].latents)
    Image.new("RGB", (80, 64), (0, 0, 250)).save(reqs[0].path)  # the user edits a.png
    edited = cache_latents(reqs, vae, to_disk=True, progress=False)
    assert calls == [["a"]]
    assert not torch.equal(edited["a"].latents, first["a"].latents)


def test_disk_cache_invalidated_by_vae_bucket_or_flip(tmp_path: Path, vae) -> None:
    reqs = make_images(tmp_path)
    cache_latents(reqs, vae, to_disk=True, progress=False, vae_id="vae-1")
    sha = file_sha256(reqs[0].path)
    path = cache_file(reqs[0].path, (64, 64))
    assert read_cache(path, expected_metadata(sha, "vae-1", reqs[0], False)) is not None
    assert read_cache(path, expected_metadata(sha, "vae-2", reqs[0], False)) is None
    assert read_cache(path, expected_metadata(sha, "vae-1", reqs[0], True)) is None
    other = LatentRequest("a", reqs[0].path, (64, 64), (81, 64))
    assert read_cache(path, expected_metadata(sha, "vae-1", other, False)) is None


def test_damaged_cache_recomputed_with_warning(tmp_path: Path, vae, caplog) -> None:
    reqs = make_images(tmp_path)
    first = cache_latents(reqs, vae, to_disk=True, progress=False)
    path = cache_file(reqs[1].path, (64, 64))
    path.write_bytes(path.read_bytes()[:40])
    with caplog.at_level(logging.WARNING):
        again = cache_latents(reqs, vae, to_disk=True, progress=False)
    assert "damaged" in caplog.text and path.name in caplog.text
    assert torch.equal(again["b"].latents, first["b"].latents)
    expected = expected_metadata(file_sha256(reqs[1].path), vae_fingerprint(vae), reqs[1], False)
    assert read_cache(path, expected) is not None  # rewritten whole


def test_vae_fingerprint_changes_with_weights(vae) -> None:
    import copy

    other = copy.deepcopy(vae)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    assert vae_fingerprint(vae) == vae_fingerprint(copy.deepcopy(vae)) != vae_fingerprint(other)


def test_build_dataset_with_disk_cache_writes_only_cache_files(tmp_path: Path, vae) -> None:
    config_mod = pytest.importorskip("library.config")
    from library.data import build_dataset, prepare_data

    folder = tmp_path / "train" / "3_ohwx"
    make_images(folder)
    before = {p.name for p in folder.iterdir()}
    cfg = config_mod.TrainConfig(train_data_dir=str(tmp_path / "train"), resolution="64", flip_aug=True,
                                 cache_latents=True, cache_latents_to_disk=True, train_batch_size=2)
    dataset = build_dataset(prepare_data(cfg), cfg, seed=1, vae=vae, progress=False)
    added = {p.name for p in folder.iterdir()} - before
    assert added == {"a_0064x0064_lorasmith.safetensors", "b_0064x0064_lorasmith.safetensors"}
    batch = dataset[(1, 0)]
    assert batch["images"] is None and batch["latents"].shape == (2, 4, 8, 8)


def test_report_counts_the_images_still_to_encode(tmp_path: Path, vae) -> None:
    """The GUI's 'caching latents 1/2 · ETA' comes from these calls: one before, one after each batch."""
    reqs = make_images(tmp_path)
    calls: list[tuple[int, int]] = []
    cache_latents(reqs, vae, to_disk=True, vae_batch_size=1, progress=False, report=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 2), (1, 2), (2, 2)]
    calls.clear()
    cache_latents(reqs, vae, to_disk=True, vae_batch_size=1, progress=False, report=lambda d, t: calls.append((d, t)))
    assert calls == []  # every latent came from the disk cache: nothing to count
