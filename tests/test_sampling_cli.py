"""`lorasmith sample` end to end on the tiny model."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from library.cli import main


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny UNet is ~10x faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_sample_command_writes_pngs_with_parameters(tmp_path, sdscripts_lora_dir, capsys):
    out = tmp_path / "out"
    rc = main(["sample", "--pretrained_model_name_or_path", "tiny", "--prompt", "a {red|blue} cube <lora:tinylora:0.5>",
               "--negative_prompt", "blurry", "--lora_dir", str(sdscripts_lora_dir), "--steps", "2", "--width", "64",
               "--height", "64", "--seed", "42", "--batch_size", "2", "--sampler", "k_euler", "--output_dir", str(out)])
    assert rc == 0
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["00000-42.png", "00001-43.png"]
    with Image.open(out / "00001-43.png") as png:
        params = png.text["parameters"]
    assert "Seed: 43" in params and "Sampler: Euler," in params and 'Lora hashes: "tinylora: ' in params
    assert "<lora:tinylora:0.5>" in params.split("\n")[0]


def test_sample_command_reports_bad_flags_before_loading(tmp_path, capsys):
    rc = main(["sample", "--pretrained_model_name_or_path", "/nonexistent/model", "--prompt", "x", "--width", "63",
               "--output_dir", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "63x512" in err and not list(tmp_path.glob("*.png"))
