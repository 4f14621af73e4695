"""A LyCORIS network trained end to end on the tiny model, then read back every way a file is read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

import train_network
from library.lora.inspect import inspect_lora, verify_lora
from library.lora.network import LoRANetwork
from library.models import build_tiny_bundle

FLAGS = (
    "--pretrained_model_name_or_path tiny --network_dim 2 --network_alpha 1 --optimizer_type AdamW "
    "--learning_rate 1e-3 --resolution 64 --train_batch_size 2 --max_train_epochs 1 --mixed_precision no "
    "--output_name ly --seed 3 --caption_extension .txt --network_module lycoris.kohya"
).split()


def _train(data: Path, out: Path, *network_args: str, extra: tuple[str, ...] = ()) -> Path:
    argv = FLAGS + ["--train_data_dir", str(data), "--output_dir", str(out), "--network_args", *network_args, *extra]
    assert train_network.main(argv) == 0
    return out / "ly.safetensors"


@pytest.mark.slow  # two short training runs per case (~30 s on 2 cores)
@pytest.mark.parametrize("args, keys", [
    (("algo=loha", "conv_dim=2", "conv_alpha=1", "dora_wd=True", "loraplus_lr_ratio=4"),
     {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha", "dora_scale"}),
    (("algo=lokr", "factor=8", "conv_dim=2"), {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"}),
    (("algo=locon", "conv_dim=2"), {"lora_down.weight", "lora_up.weight", "alpha"}),
])
def test_train_save_and_read_back(shapes_data, tmp_path, args, keys):
    path = _train(shapes_data, tmp_path / "out", *args)
    with safe_open(str(path), "pt") as f:
        names, md = list(f.keys()), f.metadata()
        fc1 = {k.split(".", 1)[1] for k in names if k.startswith("lora_te_text_model_encoder_layers_0_mlp_fc1.")}
    assert {k.split(".", 1)[1] for k in names} == keys
    assert fc1 <= keys and "alpha" in fc1
    assert md["ss_network_module"] == "lycoris.kohya" and json.loads(md["ss_network_args"])["algo"] == args[0][5:]
    assert any(k.startswith("lora_unet_conv_in.") for k in names)  # LyCORIS' preset target

    passed, problems = verify_lora(path)
    assert not problems and any("sshs_model_hash matches" in p for p in passed)
    report = inspect_lora(path)
    assert report["algorithms"] == [args[0][5:].replace("locon", "lora")] and report["num_modules"] == len({k.split(".")[0] for k in names})
    bundle = build_tiny_bundle(0)
    net = LoRANetwork.from_weights(path, bundle.unet, bundle.text_encoder)
    assert not net.unmatched_keys and max(a.delta_weight(1.0).abs().max().item() for a in net.adapters) > 0

    # --network_weights continues from the file (same network_args: the shapes fit)
    again = _train(shapes_data, tmp_path / "again", *args, extra=("--network_weights", str(path)))
    assert again.is_file()
