"""`lorasmith demo` end to end, shortened to one epoch: files, samples, logs and the grid."""
from __future__ import annotations

from PIL import Image

from library.demo import GRID_SEEDS, GRID_WEIGHTS, OUTPUT_NAME, print_summary, run_demo


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


def test_the_trainer_does_not_import_the_tools_above_it():
    """Issue 24: library/training/demo.py imported library.world; the demo now sits above the trainer."""
    import ast
    from pathlib import Path

    from library.cli import build_parser

    library = Path(__file__).resolve().parents[1] / "library"

    def imported(package: str) -> dict[Path, set[str]]:
        found = {}
        for path in (library / package).glob("*.py"):
            tree = ast.parse(path.read_text())
            found[path] = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        return found

    above_training = ("library.world", "library.demo", "library.evaluation", "library.sweep", "library.cli")
    for path, modules in imported("training").items():
        assert not {m for m in modules if m.startswith(above_training)}, path
    # The scorer is measured by both the trainer (--evaluate_every_n_epochs) and `lorasmith evaluate`: below both.
    for path, modules in imported("scoring").items():
        assert not {m for m in modules if m.startswith(above_training + ("library.training",))}, path
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert "demo" in sub.choices and "train" in sub.choices


def test_setup_and_optimizer_print_nothing_the_user_cannot_act_on(capfd):
    """Issue 24: diffusers' 'should be kept in float32: []' and DAdaptation's 'Using decoupled weight decay'."""
    import torch

    from library.config import TrainConfig
    from library.training.optimizers import build_optimizer
    from library.training.setup import load_bundle

    load_bundle(TrainConfig(pretrained_model_name_or_path="tiny"), torch.device("cpu"), torch.float32)
    param = torch.nn.Parameter(torch.zeros(3))
    build_optimizer("DAdaptAdam", ["decouple=True", "use_bias_correction=True"], [{"params": [param]}], 1.0)
    out, err = capfd.readouterr()
    assert "kept in float32" not in out + err
    assert "Using decoupled weight decay" not in out + err


def test_summary_names_the_lora_files_in_one_short_line(tmp_path, capsys):
    from library.demo import DemoPaths

    files = [tmp_path / "lora" / f"{OUTPUT_NAME}-{i:06d}.safetensors" for i in range(1, 9)]
    print_summary(DemoPaths(tmp_path / "dataset", files, tmp_path / "samples", None, tmp_path / "grid.png"))
    line = next(l for l in capsys.readouterr().out.splitlines() if "LoRA files" in l)
    assert line.strip() == f"LoRA files:   {files[0]} … {files[-1].name} (8 files)"
