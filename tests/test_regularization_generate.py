"""Generated reg sets: seeds per index, parameters in every PNG, resume after an interruption."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from library.errors import DatasetError, SamplingError
from library.sampling.infotext import format_infotext, parse_infotext
from regularization.generate import (
    GenerationSettings,
    consecutive_runs,
    generate_set,
    missing_indices,
    sampler_render,
    with_model_facts,
)


def _seeded_render(settings: GenerationSettings, seeds: list[int]) -> list[tuple[Image.Image, str]]:
    """Stands in for the sampler: a picture that is a pure function of the seed."""
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        pixels = rng.integers(0, 256, (settings.height, settings.width, 3), dtype=np.uint8)
        params = {"Seed": seed, "Size": f"{settings.width}x{settings.height}"}
        out.append((Image.fromarray(pixels), format_infotext(settings.prompt, settings.negative_prompt, params)))
    return out


class _StopAt:
    """Renders until asked for seed `stop_seed`, then is interrupted (like Ctrl+C)."""

    def __init__(self, stop_seed: int) -> None:
        self.stop_seed, self.seeds = stop_seed, []

    def __call__(self, settings: GenerationSettings, seeds: list[int]):
        if self.stop_seed in seeds:
            raise KeyboardInterrupt
        self.seeds += seeds
        return _seeded_render(settings, seeds)


SETTINGS = GenerationSettings(prompt="photo of a woman", negative_prompt="blurry", width=16, height=24, steps=4,
                              sampler="Euler a", seed=100, model="tiny", model_hash="abcdef0123456789")


def test_consecutive_runs():
    assert consecutive_runs([0, 1, 2, 5, 6], 2) == [[0, 1], [2], [5, 6]]
    assert consecutive_runs([3, 4, 5], 8) == [[3, 4, 5]]


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    full = generate_set(tmp_path / "full", "woman", 6, SETTINGS, _seeded_render, progress=False)
    assert len(full.written) == 6 and full.folder.name == "1_woman"
    stopper = _StopAt(103)
    with pytest.raises(KeyboardInterrupt):
        generate_set(tmp_path / "cut", "woman", 6, SETTINGS, stopper, progress=False)
    folder = tmp_path / "cut" / "1_woman"
    assert missing_indices(folder, 6) == [3, 4, 5] and stopper.seeds == [100, 101, 102]
    assert not [p for p in folder.iterdir() if p.suffix == ".tmp"]
    resumer = _StopAt(-1)
    resumed = generate_set(tmp_path / "cut", "woman", 6, SETTINGS, resumer, batch_size=2, progress=False)
    assert resumer.seeds == [103, 104, 105] and resumed.already_done == 3
    for i in range(6):
        a = Image.open(full.folder / f"{i:05d}.png")
        b = Image.open(folder / f"{i:05d}.png")
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert parse_infotext(b.text["parameters"]) == ("photo of a woman", "blurry",
                                                        {"Seed": str(100 + i), "Size": "16x24"})
    again = generate_set(tmp_path / "cut", "woman", 6, SETTINGS, _StopAt(-1), progress=False)
    assert again.written == [] and again.already_done == 6
    more = generate_set(tmp_path / "cut", "woman", 8, SETTINGS, _seeded_render, progress=False)
    assert [p.name for p in more.written] == ["00006.png", "00007.png"]


def test_other_settings_refused_unless_overwrite(tmp_path):
    generate_set(tmp_path, "woman", 2, SETTINGS, _seeded_render, progress=False)
    other = GenerationSettings(**{**SETTINGS.__dict__, "cfg_scale": 5.0})
    with pytest.raises(DatasetError, match="other settings") as err:
        generate_set(tmp_path, "woman", 2, other, _seeded_render, progress=False)
    assert any("cfg_scale: 7.0 on disk, 5.0 now" in p for p in err.value.problems)
    redone = generate_set(tmp_path, "woman", 2, other, _seeded_render, overwrite=True, progress=False)
    assert len(redone.written) == 2
    with pytest.raises(DatasetError):
        generate_set(tmp_path, "wo/man", 2, SETTINGS, _seeded_render, progress=False)


@pytest.fixture
def one_torch_thread():
    """On a shared 2-core machine torch's second thread spin-waits: one thread is ~50x faster here."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_resumable_generation_on_the_tiny_model(tmp_path, one_torch_thread):
    """Interrupted after image 1 of 2, the re-run makes only image 2, with seed + 1, on the real sampler.

    (That a resumed image equals an uninterrupted one is checked above with a seeded stand-in; here the
    images come from library.sampling, whose own tests cover its determinism. Kept to 2 images at 32x32,
    2 steps, so the test stays within seconds on a shared CPU.)
    """
    from library.models import build_tiny_bundle

    bundle = build_tiny_bundle(seed=0)
    settings = with_model_facts(GenerationSettings(prompt="photo of a woman", width=32, height=32, steps=2,
                                                   sampler="Euler a", seed=42), bundle)
    render = sampler_render(bundle, settings)
    seen = []

    def interrupted(settings, seeds):
        if 43 in seeds:
            raise KeyboardInterrupt
        seen.append(seeds)
        return render(settings, seeds)

    with pytest.raises(KeyboardInterrupt):
        generate_set(tmp_path, "woman", 2, settings, interrupted, progress=False)
    assert seen == [[42]] and missing_indices(tmp_path / "1_woman", 2) == [1]
    resumed = generate_set(tmp_path, "woman", 2, settings, render, progress=False)
    assert [p.name for p in resumed.written] == ["00001.png"] and resumed.already_done == 1
    first, second = (Image.open(tmp_path / "1_woman" / n) for n in ("00000.png", "00001.png"))
    assert first.size == second.size == (32, 32)
    assert not np.array_equal(np.asarray(first), np.asarray(second))
    for img, seed in ((first, "42"), (second, "43")):
        prompt, _negative, params = parse_infotext(img.text["parameters"])
        assert (prompt, params["Seed"], params["Sampler"], params["Steps"]) == ("photo of a woman", seed, "Euler a", "2")
        assert params["Model hash"] == bundle.facts.model_hash[:10]
    with pytest.raises(SamplingError):
        sampler_render(bundle, GenerationSettings(prompt="x", sampler="no such sampler"))


def test_reg_generate_cli_resumes(tmp_path, capsys, one_torch_thread):
    from library.cli import main

    argv = ["reg", "generate", str(tmp_path), "--class_prompt", "woman", "--prompt", "photo of a woman",
            "--count", "1", "--pretrained_model_name_or_path", "tiny", "--resolution", "32", "--steps", "1",
            "--seed", "5", "--no_progress"]
    assert main(argv) == 0
    assert "0 already there, 1 generated, 1 of 1" in capsys.readouterr().out
    assert main(argv) == 0
    assert "1 already there, 0 generated, 1 of 1" in capsys.readouterr().out
    params = parse_infotext(Image.open(tmp_path / "1_woman" / "00000.png").text["parameters"])[2]
    assert (params["Seed"], params["Size"], params["Model"]) == ("5", "32x32", "tiny")
    assert main(argv[:-3] + ["--seed", "-1", "--no_progress"]) == 2
