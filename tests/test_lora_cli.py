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
        assert f"{path}: OK" in out and "down/up pairs and ranks agree" in out
        assert main(["inspect", str(path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["rank"] == 2
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes((tmp_path / "t.ckpt").read_bytes()[:-40])
    assert main(["verify", str(damaged)]) == 1
    assert "damaged.ckpt" in capsys.readouterr().err
