"""`lorasmith grid` end to end: the --lora/--weights shortcut on the tiny model."""
from __future__ import annotations

from PIL import Image

from library.cli import main



def test_grid_command_epochs_by_weights(tmp_path, sdscripts_lora_dir, capsys):
    out = tmp_path / "grid"
    rc = main(["grid", "--pretrained_model_name_or_path", "tiny", "--prompt", "a red cube", "--steps", "1",
               "--width", "64", "--height", "64", "--seed", "4", "--output_dir", str(out),
               "--lora", str(sdscripts_lora_dir / "tinylora-00000*.safetensors"), "--weights", "0.5-1 [2]"])
    assert rc == 0
    assert "grid: " in capsys.readouterr().out
    assert len(list((out / "cells").glob("*.png"))) == 4
    with Image.open(out / "xyz_grid-0000.png") as grid:
        params = grid.text["parameters"]
    assert 'X Type: LoRA, X Values: "epoch 1, epoch 2"' in params and 'Y Values: "0.5-1 [2]"' in params


def test_grid_command_rejects_batches(tmp_path, capsys):
    rc = main(["grid", "--pretrained_model_name_or_path", "tiny", "--prompt", "x", "--batch_size", "2",
               "--x_type", "Seed", "--x_values", "1,2", "--output_dir", str(tmp_path)])
    assert rc == 2 and "Seed axis" in capsys.readouterr().err
