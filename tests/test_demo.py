"""`lorasmith demo` end to end, shortened to one epoch: files, samples, logs and the grid."""
from __future__ import annotations

from PIL import Image

from library.training.demo import GRID_SEEDS, GRID_WEIGHTS, OUTPUT_NAME, print_summary, run_demo


def test_one_epoch_demo_writes_lora_samples_logs_and_an_epoch_weight_grid(tmp_path, capsys):
    paths = run_demo(tmp_path / "demo", epochs=1, progress=False)
    assert paths.dataset.name == "10_ohwx shape"
    assert len(list(paths.dataset.glob("*.png"))) == 8
    assert [f.name for f in paths.lora_files] == [f"{OUTPUT_NAME}.safetensors"]
    assert len(list(paths.samples.glob(f"{OUTPUT_NAME}_e000001_*.png"))) == 2
    assert paths.logs is not None and any(paths.logs.rglob("events.out.tfevents.*"))
    grid = Image.open(paths.grid)
    assert "parameters" in grid.info  # A1111's infotext chunk, like every grid we write
    rows, seeds = len(GRID_WEIGHTS.split(",")), len(GRID_SEEDS.split(","))
    assert grid.width > seeds * 64 and grid.height > rows * 64  # one 64 px cell per weight and seed, plus labels
    print_summary(paths)
    out = capsys.readouterr().out
    assert str(paths.grid) in out and "tensorboard --logdir" in out
