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


class Recorder(torch.nn.Module):
    """A module that records where it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.sent: list[str] = []

    def to(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        self.sent.append(str(args[0] if args else kwargs.get("device")))
        return self


@pytest.mark.parametrize("latents, te, lowram, lowvram, vae_to, te_to", [
    (True, True, False, False, ["cpu"], ["cpu"]),  # default: both wait in RAM
    (True, False, False, False, ["cpu"], []),  # a text encoder still in use stays
    (False, True, False, False, [], ["cpu"]),  # pixels encoded every step: the VAE stays
    (True, True, True, False, [], []),  # --lowram: no RAM copies
    (True, True, True, True, ["cpu"], ["cpu"]),  # --lowvram wins over --lowram
    (True, True, False, True, ["cpu"], ["cpu"]),
])
def test_offload_after_caching_moves_what_each_option_says(latents, te, lowram, lowvram, vae_to, te_to,
                                                           monkeypatch) -> None:
    emptied: list[bool] = []
    monkeypatch.setattr(placement.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(placement.torch.cuda, "empty_cache", lambda: emptied.append(True))
    bundle = SimpleNamespace(vae=Recorder(), text_encoder=Recorder())
    moved = placement.offload_after_caching(bundle, latents, te, lowram, lowvram)
    assert bundle.vae.sent == vae_to and bundle.text_encoder.sent == te_to
    assert moved == [name for name, sent in (("VAE", vae_to), ("text encoder", te_to)) if sent]
    assert emptied == ([True] if lowvram else [])


def test_samples_bring_the_vae_and_text_encoder_back_and_return_them(monkeypatch, tmp_path) -> None:
    from library.training import samples

    bundle = SimpleNamespace(vae=Recorder(), text_encoder=Recorder())
    cfg = SimpleNamespace(sample_prompts=None, sample_sampler="ddim", clip_skip=None, output_dir=str(tmp_path),
                          output_name="t")
    parts = SimpleNamespace(config=cfg, bundle=bundle, device=torch.device("meta"), rng=SimpleNamespace(seed=1),
                            network=None)
    hook = samples.SampleHook(parts, samples.Events())
    hook.lines = []
    assert hook._run(None, 1) == []
    assert bundle.vae.sent == ["meta", "cpu"] and bundle.text_encoder.sent == ["meta", "cpu"]
