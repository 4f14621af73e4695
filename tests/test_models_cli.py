"""`lorasmith inspect-model` and `lorasmith convert` end to end on the tiny model."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from library.cli import main
from library.models import build_tiny_bundle
from library.models.saving import ldm_state_dict, save_single_file
from library.models.single_file import ema_key


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_bundle()


def test_inspect_model_text(capsys):
    assert main(["inspect-model", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "architecture: Stable Diffusion 1.x [sd1] (config: tiny)" in out
    assert "unet 2,446,788 | vae 367,527 | text_encoder 1,600,672 | total 4,414,987" in out
    assert "prediction:   epsilon (from the built-in's scheduler config (tiny))" in out


def test_inspect_model_json_with_ema(tmp_path, tiny, capsys):
    from safetensors.torch import save_file
    ldm = ldm_state_dict(tiny, torch.float16)
    ldm.update({ema_key(k): v.clone() for k, v in list(ldm.items()) if k.startswith("model.diffusion_model.")})
    path = tmp_path / "both.safetensors"
    save_file(ldm, str(path))
    assert main(["inspect-model", str(path), "--json", "--use_ema_weights"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["weights_picked"] == "ema" and facts["stored_dtype"] == "fp16"
    assert facts["source_format"] == "single_file" and len(facts["legacy_hash"]) == 8
    assert main(["inspect-model", str(path)]) == 0
    assert "non-EMA (the file also holds EMA weights" in capsys.readouterr().out


def test_inspect_missing_file_is_one_screen_error(tmp_path, capsys):
    assert main(["inspect-model", str(tmp_path / "gone.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "base model not found" in err and "Traceback" not in err


def test_hub_id_is_not_downloaded_and_says_what_to_pass(capsys):
    assert main(["inspect-model", "runwayml/stable-diffusion-v1-5"]) == 2
    err = capsys.readouterr().err
    assert "looks like a Hugging Face hub id" in err and "offline" in err
    assert ".safetensors" in err and "diffusers folder" in err


def test_convert_single_file_to_folder_and_back(tmp_path, tiny, capsys):
    src = save_single_file(tiny, tmp_path / "src.safetensors")
    folder, back = tmp_path / "pipe", tmp_path / "back.safetensors"
    assert main(["convert", str(src), str(folder)]) == 0
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert main(["convert", str(folder), str(back)]) == 0
    a, b = load_file(str(src)), load_file(str(back))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_convert_dtype_and_overwrite(tmp_path, capsys):
    dst = tmp_path / "half.safetensors"
    assert main(["convert", "tiny", str(dst), "--dtype", "bf16"]) == 0
    assert load_file(str(dst))["model.diffusion_model.out.2.weight"].dtype == torch.bfloat16
    before = dst.read_bytes()
    assert main(["convert", "tiny", str(dst), "--dtype", "fp16"]) == 2
    assert "already exists" in capsys.readouterr().err and dst.read_bytes() == before
    assert main(["convert", "tiny", str(dst), "--dtype", "fp16", "--overwrite"]) == 0
    assert load_file(str(dst))["model.diffusion_model.out.2.weight"].dtype == torch.float16
    # With no --dtype the source's stored precision is kept.
    kept = tmp_path / "kept"
    assert main(["convert", str(dst), str(kept)]) == 0
    assert load_file(str(kept / "unet" / "diffusion_pytorch_model.safetensors"))["conv_in.weight"].dtype == torch.float16


def test_convert_refuses_pickle_output_and_self_overwrite(tmp_path, capsys):
    assert main(["convert", "tiny", str(tmp_path / "out.ckpt")]) == 2
    assert "pickle" in capsys.readouterr().err
    src = tmp_path / "m.safetensors"
    assert main(["convert", "tiny", str(src)]) == 0
    assert main(["convert", str(src), str(src), "--overwrite"]) == 2
    assert "source itself" in capsys.readouterr().err


def test_convert_overwrites_folder(tmp_path):
    dst = tmp_path / "pipe"
    assert main(["convert", "tiny", str(dst)]) == 0
    (dst / "stale.txt").write_text("old")
    assert main(["convert", "tiny", str(dst), "--overwrite"]) == 0
    assert not (dst / "stale.txt").exists() and (dst / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
