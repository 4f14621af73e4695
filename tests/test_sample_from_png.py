"""`lorasmith sample --from_png`: the same image again from its infotext, flags override, clear errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from library.cli import main
from library.errors import SamplingError
from library.sampling.from_png import settings_from_infotext

BASE = ["sample", "--pretrained_model_name_or_path", "tiny", "--width", "64", "--height", "64"]


def _only_png(folder):
    files = sorted(folder.glob("*.png"))
    assert len(files) == 1, files
    return files[0]


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy(), im.text["parameters"]


def test_a1111_fields_map_to_request_fields():
    s = settings_from_infotext(
        "a cat <lora:style:0.7>\nNegative prompt: ugly\nSteps: 25, Sampler: DPM++ 2M, Schedule type: Karras, "
        "CFG scale: 6.5, Seed: 123, Size: 512x768, Model hash: 0123456789, Model: v1-5, Clip skip: 2, "
        "Denoising strength: 0.4, Hires upscale: 1.5, Hires steps: 12, Hires upscaler: Latent (nearest), "
        'Lora hashes: "style: abcdef012345", Variation seed: 9, Version: v1.9.4')
    f = s.fields
    assert f == {"prompt": "a cat <lora:style:0.7>", "negative_prompt": "ugly", "steps": 25, "cfg_scale": 6.5,
                 "seed": 123, "width": 512, "height": 768, "clip_skip": 2, "sampler": "DPM++ 2M Karras",
                 "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 12, "hr_upscaler": "Latent (nearest)",
                 "denoising_strength": 0.4}
    assert s.lora_hashes == {"style": "abcdef012345"}
    assert (s.model, s.model_hash) == ("v1-5", "0123456789")
    assert s.not_restored == ["Variation seed"]


def test_schedule_type_absent_is_a1111_automatic():
    s = settings_from_infotext("x\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1, Size: 64x64")
    assert s.fields["sampler"] == "DPM++ 2M Karras"  # A1111's Automatic for DPM++ 2M is Karras
    s = settings_from_infotext("x\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64")
    assert s.fields["sampler"] == "Euler a" and s.fields["clip_skip"] == 1 and "enable_hr" not in s.fields


def test_regenerate_is_bit_identical_and_flags_override(tmp_path, sdscripts_lora_dir, capsys):
    first = tmp_path / "first"
    assert main(BASE + ["--prompt", "a (red:1.2) cube <lora:tinylora:0.5>", "--negative_prompt", "blurry",
                        "--lora_dir", str(sdscripts_lora_dir), "--steps", "3", "--cfg_scale", "5.5",
                        "--sampler", "DPM++ 2M Karras", "--clip_skip", "2", "--seed", "77",
                        "--output_dir", str(first)]) == 0
    original = _only_png(first)
    pixels, params = _pixels(original)

    again = tmp_path / "again"
    # only the model and the LoRA folder are given: everything else comes from the PNG
    assert main(["sample", "--pretrained_model_name_or_path", "tiny", "--from_png", str(original),
                 "--lora_dir", str(sdscripts_lora_dir), "--output_dir", str(again)]) == 0
    pixels2, params2 = _pixels(_only_png(again))
    assert np.array_equal(pixels, pixels2)
    assert params2 == params

    other = tmp_path / "other"
    assert main(["sample", "--pretrained_model_name_or_path", "tiny", "--from_png", str(original),
                 "--lora_dir", str(sdscripts_lora_dir), "--seed", "78", "--steps", "2",
                 "--output_dir", str(other)]) == 0
    pixels3, params3 = _pixels(_only_png(other))
    assert "Seed: 78" in params3 and "Steps: 2," in params3
    assert "CFG scale: 5.5" in params3 and "Clip skip: 2" in params3 and "Sampler: DPM++ 2M" in params3
    assert params3.split("\n")[:2] == params.split("\n")[:2]
    assert not np.array_equal(pixels, pixels3)


def test_hires_settings_are_restored(tmp_path):
    first = tmp_path / "first"
    assert main(["sample", "--pretrained_model_name_or_path", "tiny", "--width", "32", "--height", "32",
                 "--prompt", "a cube", "--steps", "2", "--seed", "5", "--enable_hr", "--hr_scale", "1.5",
                 "--hr_second_pass_steps", "1", "--denoising_strength", "0.4", "--hr_upscaler", "Latent (nearest)",
                 "--output_dir", str(first)]) == 0
    pixels, params = _pixels(_only_png(first))
    assert pixels.shape == (48, 48, 3)
    again = tmp_path / "again"
    assert main(["sample", "--pretrained_model_name_or_path", "tiny", "--from_png", str(_only_png(first)),
                 "--output_dir", str(again)]) == 0
    pixels2, params2 = _pixels(_only_png(again))
    assert params2 == params and np.array_equal(pixels, pixels2)


def test_changed_lora_file_is_refused(tmp_path, sdscripts_lora_dir, capsys):
    first = tmp_path / "first"
    assert main(BASE + ["--prompt", "a cube <lora:tinylora:0.5>", "--lora_dir", str(sdscripts_lora_dir),
                        "--steps", "1", "--seed", "1", "--output_dir", str(first)]) == 0
    changed = tmp_path / "loras"
    changed.mkdir()
    shutil.copy(sdscripts_lora_dir / "tinylora.safetensors", changed / "tinylora.safetensors")
    from safetensors.torch import load_file, save_file

    tensors = load_file(changed / "tinylora.safetensors")
    key = next(iter(tensors))
    tensors[key] = tensors[key] * 2
    save_file(tensors, changed / "tinylora.safetensors")
    capsys.readouterr()
    rc = main(["sample", "--pretrained_model_name_or_path", "tiny", "--from_png", str(_only_png(first)),
               "--lora_dir", str(changed), "--output_dir", str(tmp_path / "again")])
    assert rc != 0
    err = capsys.readouterr().err
    assert "LoRA files differ" in err and "<lora:tinylora>" in err
    assert not (tmp_path / "again").exists() or not list((tmp_path / "again").glob("*.png"))


def test_png_without_infotext_names_the_file(tmp_path, capsys):
    bare = tmp_path / "photo.png"
    Image.new("RGB", (16, 16)).save(bare)
    rc = main(["sample", "--pretrained_model_name_or_path", "tiny", "--from_png", str(bare),
               "--output_dir", str(tmp_path / "out")])
    assert rc != 0
    assert f"{bare}: the image has no generation parameters" in capsys.readouterr().err


def test_no_prompt_and_no_png_is_an_error(tmp_path, capsys):
    rc = main(["sample", "--pretrained_model_name_or_path", "tiny", "--output_dir", str(tmp_path)])
    assert rc != 0 and "--from_png" in capsys.readouterr().err


def test_bad_number_in_infotext():
    with pytest.raises(SamplingError, match="'Steps' is 'many'"):
        settings_from_infotext("x\nSteps: many, Sampler: Euler, CFG scale: 7, Seed: 1")


def test_embeddings_restored_and_checked_by_ti_hashes(tmp_path, capsys):
    import torch

    emb_dir = tmp_path / "emb"
    emb_dir.mkdir()
    torch.save({"string_to_param": {"*": torch.nn.Parameter(torch.randn(2, 32))}}, emb_dir / "badthing.pt")
    first = tmp_path / "first"
    assert main(BASE + ["--prompt", "a cube", "--negative_prompt", "(badthing:1.2)", "--embeddings_dir",
                        str(emb_dir), "--steps", "1", "--seed", "9", "--output_dir", str(first)]) == 0
    pixels, params = _pixels(_only_png(first))
    assert 'TI hashes: "badthing: ' in params
    again = tmp_path / "again"
    assert main(["sample", "--pretrained_model_name_or_path", "tiny", "--from_png", str(_only_png(first)),
                 "--embeddings_dir", str(emb_dir), "--output_dir", str(again)]) == 0
    assert np.array_equal(_pixels(_only_png(again))[0], pixels)
    capsys.readouterr()
    assert main(["sample", "--pretrained_model_name_or_path", "tiny", "--from_png", str(_only_png(first)),
                 "--output_dir", str(tmp_path / "none")]) != 0
    assert "pass --embeddings_dir" in capsys.readouterr().err
    torch.save({"string_to_param": {"*": torch.nn.Parameter(torch.randn(2, 32))}}, emb_dir / "badthing.pt")
    assert main(["sample", "--pretrained_model_name_or_path", "tiny", "--from_png", str(_only_png(first)),
                 "--embeddings_dir", str(emb_dir), "--output_dir", str(tmp_path / "changed")]) != 0
    assert "embeddings differ" in capsys.readouterr().err


def test_settings_give_a_request_with_overrides():
    from library.sampling.pipeline import SampleRequest

    s = settings_from_infotext("a cat\nSteps: 12, Sampler: Euler, CFG scale: 4, Seed: 8, Size: 64x96")
    base = SampleRequest(prompt="", lora_dir="loras", steps=30)
    r = s.request(base, seed=9)
    assert (r.prompt, r.steps, r.cfg_scale, r.seed, r.width, r.height, r.lora_dir, r.sampler) == (
        "a cat", 12, 4.0, 9, 64, 96, "loras", "Euler")


def test_hires_upscaler_name_found_in_models_dir(tmp_path):
    from library.sampling.from_png import resolve_upscaler

    assert resolve_upscaler("Latent (nearest)", None) == "Latent (nearest)"
    assert resolve_upscaler("Lanczos", None) == "Lanczos"
    (tmp_path / "4x-UltraSharp.pth").write_bytes(b"x")
    assert resolve_upscaler("4x-UltraSharp", str(tmp_path)) == str((tmp_path / "4x-UltraSharp.pth").resolve())
    with pytest.raises(SamplingError, match="pass --models_dir"):
        resolve_upscaler("4x-UltraSharp", None)
    with pytest.raises(SamplingError, match="no such file"):
        resolve_upscaler("R-ESRGAN 4x+", str(tmp_path))
