"""--vae for sample, VAE hash/VAE in infotext, and a grid's VAE axis (None = the model's own)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from library.cli import main
from library.errors import SamplingError
from library.models import build_tiny_bundle

COMMON = ["--pretrained_model_name_or_path", "tiny", "--prompt", "a cube", "--steps", "1", "--width", "32",
          "--height", "32", "--seed", "3"]


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae") / "other-vae"
    build_tiny_bundle(seed=7).vae.save_pretrained(str(folder))
    return folder


def _png(folder):
    path = min(folder.glob("*.png"))
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy(), im.text["parameters"]


def test_sample_with_vae_writes_it_in_infotext(tmp_path, vae_folder):
    assert main(["sample", *COMMON, "--output_dir", str(tmp_path / "own")]) == 0
    assert main(["sample", *COMMON, "--vae", str(vae_folder), "--output_dir", str(tmp_path / "other")]) == 0
    own, own_params = _png(tmp_path / "own")
    other, params = _png(tmp_path / "other")
    assert "VAE" not in own_params
    assert "VAE: other-vae" in params and "VAE hash: " in params
    assert not np.array_equal(own, other)


def test_grid_vae_axis(tmp_path, vae_folder):
    out = tmp_path / "grid"
    assert main(["grid", *COMMON, "--x_type", "VAE", "--x_values", f"None, {vae_folder}",
                 "--output_dir", str(out)]) == 0
    cells = sorted((out / "cells").glob("*.png"))
    assert len(cells) == 2
    with Image.open(cells[0]) as a, Image.open(cells[1]) as b:
        assert "VAE" not in a.text["parameters"] and "VAE: other-vae" in b.text["parameters"]
        first, second = np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))
    assert not np.array_equal(first, second)
    assert main(["sample", *COMMON, "--vae", str(vae_folder), "--output_dir", str(tmp_path / "one")]) == 0
    assert np.array_equal(_png(tmp_path / "one")[0], second)  # the cell is what sample --vae makes


def test_vae_axis_value_must_exist(tmp_path):
    from library.evaluation.axes import axis_type

    with pytest.raises(SamplingError, match="VAE axis: 'nope.safetensors'"):
        axis_type("VAE").parse("None, nope.safetensors", None, None)
