"""Where cached tensors go (GPU when they fit, pinned RAM otherwise), checked with a mocked CUDA device."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from library.data.latent_cache import CachedLatents
from library.training import placement

CUDA = torch.device("cuda", 0)


def fake_dataset(images: int = 3, flipped: bool = True, captions: int = 2) -> SimpleNamespace:
    latents = {(0, i): CachedLatents(torch.zeros(4, 8, 8), torch.zeros(4, 8, 8) if flipped else None) for i in range(images)}
    te = {f"caption {i}": torch.zeros(77, 32) for i in range(captions)}
    return SimpleNamespace(latents=latents, text_encoder_outputs=te)


def test_cache_bytes_counts_latents_flipped_copies_and_encoder_outputs() -> None:
    ds = fake_dataset()
    assert placement.cache_bytes(ds) == 3 * 2 * 4 * 8 * 8 * 4 + 2 * 77 * 32 * 4
    assert placement.cache_bytes(SimpleNamespace(latents=None, text_encoder_outputs=None)) == 0


def test_caches_fit_within_a_share_of_free_memory() -> None:
    assert placement.caches_fit(250, 1000) and not placement.caches_fit(251, 1000)
    assert placement.caches_fit(10, 100, share=0.1) and not placement.caches_fit(11, 100, share=0.1)


def test_move_caches_moves_every_tensor() -> None:
    ds = fake_dataset()
    placement.move_caches(ds, torch.device("meta"))
    assert all(c.latents.is_meta and c.flipped.is_meta for c in ds.latents.values())
    assert all(t.is_meta for t in ds.text_encoder_outputs.values())


@pytest.fixture
def moves(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(placement, "move_caches", lambda ds, device: calls.append(device))
    return calls


@pytest.mark.parametrize("free, workers, lowvram, on_gpu, note", [
    (10 * 2**20, 0, False, True, "kept on cuda:0"),
    (2**10, 0, False, False, "do not fit"),
    (10 * 2**20, 2, False, False, "DataLoader workers"),
    (10 * 2**20, 0, True, False, "--lowvram"),
])
def test_place_caches_on_a_cuda_device(monkeypatch, moves: list, free: int, workers: int, lowvram: bool,
                                       on_gpu: bool, note: str) -> None:
    monkeypatch.setattr(placement.torch.cuda, "mem_get_info", lambda device=None: (free, 80 * 2**30))
    placed, message = placement.place_caches(fake_dataset(), CUDA, workers, lowvram)
    assert placed is on_gpu and note in message
    assert moves == ([CUDA] if on_gpu else [])


def test_place_caches_leaves_cpu_runs_and_empty_caches_alone(moves: list) -> None:
    assert placement.place_caches(fake_dataset(), torch.device("cpu"), 0, False) == (False, None)
    empty = SimpleNamespace(latents=None, text_encoder_outputs=None)
    assert placement.place_caches(empty, CUDA, 0, False) == (False, None)
    assert moves == []
