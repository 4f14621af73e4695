"""Generated reg sets: seeds per index, parameters in every PNG, resume after an interruption."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from library.errors import DatasetError
from regularization.generate import GenerationSettings, ImageJob, generate_set, infotext, missing_indices


def _seeded_render(job: ImageJob) -> Image.Image:
    """Stands in for the sampler: a picture that is a pure function of the seed."""
    rng = np.random.default_rng(job.seed)
    s = job.settings
    return Image.fromarray(rng.integers(0, 256, (s.height, s.width, 3), dtype=np.uint8))


class _StopAt:
    def __init__(self, index: int) -> None:
        self.index, self.calls = index, []

    def __call__(self, job: ImageJob) -> Image.Image:
        if job.index == self.index:
            raise KeyboardInterrupt
        self.calls.append(job.index)
        return _seeded_render(job)


SETTINGS = GenerationSettings(prompt="photo of a woman", negative_prompt="blurry", width=16, height=24, steps=4,
                              sampler="Euler a", seed=100, model="tiny", model_hash="abcdef0123456789")


def test_infotext_is_a1111_style():
    text = infotext(ImageJob(3, 103, SETTINGS))
    assert text == ("photo of a woman\nNegative prompt: blurry\n"
                    "Steps: 4, Sampler: Euler a, CFG scale: 7.0, Seed: 103, Size: 16x24, "
                    "Model hash: abcdef0123, Model: tiny")


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    full = generate_set(tmp_path / "full", "woman", 6, SETTINGS, _seeded_render, progress=False)
    assert len(full.written) == 6 and full.folder.name == "1_woman"
    stopper = _StopAt(3)
    with pytest.raises(KeyboardInterrupt):
        generate_set(tmp_path / "cut", "woman", 6, SETTINGS, stopper, progress=False)
    folder = tmp_path / "cut" / "1_woman"
    assert missing_indices(folder, 6) == [3, 4, 5] and stopper.calls == [0, 1, 2]
    assert not [p for p in folder.iterdir() if p.suffix == ".tmp"]
    calls = []
    resumed = generate_set(tmp_path / "cut", "woman", 6, SETTINGS,
                           lambda job: calls.append(job.index) or _seeded_render(job), progress=False)
    assert calls == [3, 4, 5] and resumed.already_done == 3
    for i in range(6):
        a = Image.open(full.folder / f"{i:05d}.png")
        b = Image.open(folder / f"{i:05d}.png")
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert b.text["parameters"].endswith(f"Seed: {100 + i}, Size: 16x24, Model hash: abcdef0123, Model: tiny")
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
    assert "CFG scale: 5.0" in Image.open(redone.written[0]).text["parameters"]
    with pytest.raises(DatasetError):
        generate_set(tmp_path, "wo/man", 2, SETTINGS, _seeded_render, progress=False)
