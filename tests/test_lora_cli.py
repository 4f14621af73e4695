"""`lorasmith inspect` and `lorasmith verify` on the sd-scripts fixture and on damaged copies."""
from __future__ import annotations

import json
import shutil

import safetensors.torch
import torch

from library.cli import main


def test_inspect_json_against_tiny_base(sdscripts_lora_dir, capsys):
    assert main(["inspect", str(sdscripts_lora_dir / "tinylora.safetensors"), "--base", "tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "kohya"
    assert (report["num_modules"], report["num_tensors"]) == (204, 612)
    assert (report["rank"], report["alpha"]) == (4, 1.0)
    assert report["dtype"] == ["float32"]
    assert report["metadata"]["ss_output_name"] == "tinylora"
    assert report["unmatched_keys"] == [] and report["modules_without_lora"] == []
    assert report["tag_frequency"]["10_ohwx shape"]["ohwx shape"] == 8
    assert report["blocks"]["te_layer_0"]["modules"] == 6
    assert report["training"]["optimizer"].startswith("torch.optim.adamw.AdamW")


def test_inspect_text_and_partial_lora_against_base(sdscripts_lora_dir, tmp_path, capsys):
    tensors = safetensors.torch.load_file(str(sdscripts_lora_dir / "tinylora.safetensors"))
    unet_only = {k: v for k, v in tensors.items() if k.startswith("lora_unet_")}
    unet_only["lora_unet_not_a_layer.lora_down.weight"] = torch.zeros(4, 8)
    unet_only["lora_unet_not_a_layer.lora_up.weight"] = torch.zeros(8, 4)
    path = tmp_path / "partial.safetensors"
    safetensors.torch.save_file(unet_only, str(path))
    assert main(["inspect", str(path), "--base", "tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unmatched_keys"] == [
        "lora_unet_not_a_layer.lora_down.weight", "lora_unet_not_a_layer.lora_up.weight",
    ]
    assert len(report["modules_without_lora"]) == 12
    assert all(n.startswith("lora_te_") for n in report["modules_without_lora"])

    assert main(["inspect", str(sdscripts_lora_dir / "tinylora.safetensors")]) == 0
    text = capsys.readouterr().out
    assert "204 (192 UNet, 12 text encoder), 612 tensors" in text
    assert "rank / alpha  4 / 1" in text
    assert "10_ohwx shape: 8 images x 10 repeats" in text
    assert "ohwx shape (8)" in text


def test_verify_good_file(sdscripts_lora_dir, capsys):
    assert main(["verify", str(sdscripts_lora_dir / "tinylora.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "sshs_model_hash matches" in out and out.rstrip().endswith("OK")


def test_verify_reports_changed_data_and_damage(sdscripts_lora_dir, tmp_path, capsys):
    changed = tmp_path / "changed.safetensors"
    shutil.copy(sdscripts_lora_dir / "tinylora.safetensors", changed)
    data = bytearray(changed.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # last float becomes NaN
    changed.write_bytes(bytes(data))
    assert main(["verify", str(changed)]) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "sshs_model_hash is" in err

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(bytes(data[:2000]))
    assert main(["verify", str(truncated)]) == 1
    assert "header length field says" in capsys.readouterr().err


def test_inspect_damaged_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not valid JSON" in err and "Traceback" not in err


def _no_weights(monkeypatch):
    """Fail the test if anything loads a base model's weights."""
    import library.models

    def refuse(*args, **kwargs):
        raise AssertionError("inspect --base sd15 must not load a model")

    monkeypatch.setattr(library.models, "load_model_bundle", refuse)


def test_inspect_against_sd15_architecture_without_weights(sdscripts_lora_dir, capsys, monkeypatch):
    """Issue 24: `--base sd15` checks keys against SD1.5 built on the meta device, no 4 GB checkpoint.
    The sd-scripts fixture was trained on the tiny architecture: same module names, other shapes."""
    _no_weights(monkeypatch)
    lora = str(sdscripts_lora_dir / "tinylora.safetensors")
    assert main(["inspect", lora, "--base", "sd15", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["base"] == "sd15" and report["base_architecture_only"] is True
    assert (report["matched_modules"], report["num_modules"], len(report["unmatched_keys"])) == (0, 204, 612)
    assert len(report["modules_without_lora"]) == 264  # SD1.5: 192 UNet + 72 text-encoder layers
    assert "but the model layer is 768 -> 3072" in " ".join(report["unmatched_reasons"])
    assert main(["inspect", lora, "--base", "SD1.5"]) == 0
    assert "against SD1.5 (architecture only, no weights loaded): 0 of 204 modules match" in capsys.readouterr().out


def test_sd15_sized_lora_matches_sd15_fully(tmp_path, capsys, monkeypatch):
    from library.lora.file import save_lora
    from library.lora.network import LoRANetwork
    from library.models.modules import build_empty_architecture

    unet, text_encoder = build_empty_architecture("sd15")
    network = LoRANetwork.create(unet, text_encoder, rank=1)
    path = save_lora(network.state_dict(), tmp_path / "sd15.safetensors", dtype="fp16")
    _no_weights(monkeypatch)
    assert main(["inspect", str(path), "--base", "sd15", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["matched_modules"], report["num_modules"], report["num_tensors"]) == (264, 264, 792)
    assert report["unmatched_keys"] == [] and report["modules_without_lora"] == []


def test_base_still_takes_a_model_path(sdscripts_lora_dir, tmp_path, capsys, monkeypatch):
    """A model folder that exists is loaded, even when it is called like an architecture."""
    from library.models import build_tiny_bundle
    from library.models.saving import save_diffusers

    save_diffusers(build_tiny_bundle(0), tmp_path / "sd15")
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", str(sdscripts_lora_dir / "tinylora.safetensors"), "--base", "sd15", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["base_architecture_only"] is False and report["matched_modules"] == 204
    assert report["modules_without_lora"] == []
def test_verify_and_inspect_read_every_format_training_writes(tmp_path, capsys):
    """--save_model_as ckpt/pt/safetensors: verify accepted only safetensors before (issue 23)."""
    from library.lora import LoRANetwork
    from library.models import load_model_bundle
    from library.training.saving import write_lora

    bundle = load_model_bundle("tiny")
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=2, alpha=1.0)
    for fmt in ("safetensors", "ckpt", "pt"):
        path = write_lora(network, tmp_path / f"t.{fmt}", fmt, torch.float16, {"ss_network_dim": "2"})
        assert main(["verify", str(path)]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert f"{path}: OK" in out and "tensors pair up and ranks agree" in out
        assert main(["inspect", str(path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["rank"] == 2
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes((tmp_path / "t.ckpt").read_bytes()[:-40])
    assert main(["verify", str(damaged)]) == 1
    assert "damaged.ckpt" in capsys.readouterr().err
