"""`lorasmith sample` end to end on the tiny model."""
from __future__ import annotations

import numpy as np
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


def _init_image(path, colour):
    Image.new("RGB", (48, 40), colour).save(path)  # not 64x64: the CLI resizes ("Just resize")
    return path


IMG2IMG = ["sample", "--pretrained_model_name_or_path", "tiny", "--prompt", "a cube", "--steps", "4",
           "--width", "64", "--height", "64", "--seed", "7"]


def test_img2img_command_writes_denoising_strength(tmp_path, monkeypatch, capsys):
    init = _init_image(tmp_path / "init.png", (200, 30, 30))
    monkeypatch.chdir(tmp_path)  # the default folder is relative: outputs/img2img
    rc = main(IMG2IMG + ["--init_image", str(init), "--denoising_strength", "0.5", "--batch_size", "2"])
    assert rc == 0
    out = tmp_path / "outputs" / "img2img"
    assert sorted(p.name for p in out.glob("*.png")) == ["00000-7.png", "00001-8.png"]
    with Image.open(out / "00001-8.png") as png:
        params = png.text["parameters"]
        assert png.size == (64, 64)
    assert "Model: tiny, Denoising strength: 0.5," in params and "Seed: 8" in params
    rc = main(IMG2IMG + ["--output_dir", str(tmp_path / "t2i")])
    with Image.open(tmp_path / "t2i" / "00000-7.png") as png, Image.open(out / "00000-7.png") as i2i:
        assert "Denoising strength" not in png.text["parameters"]
        assert np.abs(np.asarray(png, np.int16) - np.asarray(i2i, np.int16)).max() > 10  # same seed, other start


def test_init_image_folder_is_sorted_and_cycled(tmp_path, monkeypatch):
    from library.sampling.pipeline import SamplingSession

    folder = tmp_path / "init"
    folder.mkdir()
    _init_image(folder / "b.png", (0, 0, 255))
    _init_image(folder / "a.jpg", (255, 0, 0))
    (folder / "a.txt").write_text("a caption, not an image")
    seen = []
    original = SamplingSession.run_jobs

    def spy(self, request, jobs, *args, init_images=None, **kwargs):
        seen.extend(im.getpixel((0, 0)) for im in init_images)
        return original(self, request, jobs, *args, init_images=init_images, **kwargs)

    monkeypatch.setattr(SamplingSession, "run_jobs", spy)
    rc = main(IMG2IMG + ["--steps", "2", "--init_image", str(folder), "--batch_count", "3",
                         "--output_dir", str(tmp_path / "out")])
    assert rc == 0
    assert [max(range(3), key=lambda c: px[c]) for px in seen] == [0, 2, 0]  # a (red), b (blue), a again
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 3
    for path in pngs:
        with Image.open(path) as png:
            assert "Denoising strength: 0.75," in png.text["parameters"]


@pytest.mark.parametrize("case", ["strength_alone", "missing", "empty_folder", "unreadable"])
def test_img2img_errors_before_loading_the_model(tmp_path, capsys, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    flags, expected = {
        "strength_alone": (["--denoising_strength", "0.5"], "without --init_image"),
        "missing": (["--init_image", str(tmp_path / "nope.png")], f"{tmp_path / 'nope.png'}: no such file"),
        "empty_folder": (["--init_image", str(tmp_path / "empty")], "holds no images"),
        "unreadable": (["--init_image", str(tmp_path / "broken.png")], str(tmp_path / "broken.png")),
    }[case]
    rc = main(["sample", "--pretrained_model_name_or_path", "/nonexistent/model", "--prompt", "x",
               "--output_dir", str(tmp_path / "out")] + flags)
    assert rc == 2
    err = capsys.readouterr().err
    assert expected in err and "/nonexistent/model" not in err
    assert not (tmp_path / "out").exists()


def test_each_batch_is_saved_before_the_next_one_runs(tmp_path, monkeypatch, capsys):
    """Issue 20: the Generate tab shows images as they finish, so `sample` saves each batch when it is decoded."""
    from library.sampling.pipeline import SamplingSession

    out = tmp_path / "out"
    seen: list[int] = []
    original = SamplingSession._run_batch

    def counting(self, *args, **kwargs):
        seen.append(len(list(out.glob("*.png"))) if out.exists() else 0)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SamplingSession, "_run_batch", counting)
    rc = main(["sample", "--pretrained_model_name_or_path", "tiny", "--prompt", "a cube", "--width", "64",
               "--height", "64", "--steps", "2", "--seed", "5", "--batch_count", "3", "--output_dir", str(out)])
    assert rc == 0
    assert seen == [0, 1, 2]  # batch k starts with the k images before it already on disk
    assert len(list(out.glob("*.png"))) == 3
    printed = [line for line in capsys.readouterr().out.splitlines() if ".png" in line]
    assert [line.split("(seed ")[1] for line in printed] == ["5)", "6)", "7)"]
