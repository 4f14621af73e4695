"""`lorasmith grid` end to end on the tiny model: the --lora/--weights shortcut, img2img grids, the GUI form."""
from __future__ import annotations

import pytest
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


GRID = ["grid", "--pretrained_model_name_or_path", "tiny", "--prompt", "a red cube", "--steps", "2",
        "--width", "64", "--height", "64", "--seed", "4"]


def test_img2img_grid_command_with_denoising_axis(tmp_path, capsys):
    Image.new("RGB", (32, 32), (30, 160, 30)).save(tmp_path / "init.png")
    out = tmp_path / "grid"
    rc = main(GRID + ["--init_image", str(tmp_path / "init.png"), "--x_type", "Denoising", "--x_values", "0.5, 1",
                      "--output_dir", str(out)])
    assert rc == 0
    cells = sorted((out / "cells").glob("*.png"))
    assert len(cells) == 2
    strengths = []
    for path in cells:
        with Image.open(path) as png:
            strengths.append(png.text["parameters"].split("Denoising strength: ")[1].split(",")[0])
    assert sorted(strengths) == ["0.5", "1"]
    with Image.open(out / "xyz_grid-0000.png") as grid:
        assert 'X Type: Denoising, X Values: "0.5, 1"' in grid.text["parameters"]


def test_grid_command_img2img_errors(tmp_path, capsys):
    rc = main(GRID + ["--x_type", "Denoising", "--x_values", "0.5", "--output_dir", str(tmp_path / "a")])
    assert rc == 2 and "Denoising needs an init image" in capsys.readouterr().err
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("1.png", "2.png"):
        Image.new("RGB", (8, 8)).save(folder / name)
    rc = main(GRID + ["--init_image", str(folder), "--x_type", "Seed", "--x_values", "1,2",
                      "--output_dir", str(tmp_path / "b")])
    assert rc == 2 and "holds 2 images; a grid uses one" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_gui_grid_form_passes_init_image_and_strength(tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e .[gui])")
    from gui.evaluate_tab import grid_command
    from gui.safety import PathGuard
    from library.errors import ConfigError

    guard = PathGuard.from_dirs([tmp_path])
    form = {"model": "tiny", "prompt": "p", "negative": "", "steps": 4, "cfg": 7.0, "seed": 1, "width": 64,
            "height": 64, "sampler": "Euler a", "output_dir": "grids", "lora": "", "x_type": "Denoising",
            "x_values": "0.3, 0.6", "y_type": "(none)", "y_values": "", "z_type": "(none)", "z_values": "",
            "init_image": str(tmp_path / "init.png"), "denoising": 0.4}
    args = grid_command(form, guard)
    assert args[args.index("--init_image") + 1] == str(tmp_path / "init.png")
    assert args[args.index("--denoising_strength") + 1] == "0.4"
    assert args[args.index("--x_type") + 1:args.index("--x_type") + 4] == ["Denoising", "--x_values", "0.3, 0.6"]
    assert "--init_image" not in grid_command({**form, "init_image": " "}, guard)
    assert "--denoising_strength" not in grid_command({**form, "init_image": ""}, guard)
    with pytest.raises(ConfigError, match="outside"):
        grid_command({**form, "init_image": "/etc/passwd"}, guard)
