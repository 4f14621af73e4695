"""`lorasmith evaluate` and --evaluate_every_n_epochs on the tiny model: outputs, TensorBoard, bad input."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from library.cli import main
from library.config import TrainConfig
from library.training.events import RecordingEvents
from library.training.trainer import train


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 images in a `1_ohwx shape` folder."""
    from library.world.bucket_dataset import make_shapes_dataset

    root = tmp_path_factory.mktemp("ev")
    make_shapes_dataset(root / "a", count=8)
    shutil.move(str(next((root / "a").iterdir())), root / "train" / "1_ohwx shape")
    return root / "train"


def config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path="tiny", train_data_dir=str(data), output_dir=str(out), output_name="t",
                caption_extension=".txt", resolution="64", enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128,
                train_batch_size=4, max_train_epochs=2, save_every_n_epochs=1, cache_latents=True, seed=3,
                learning_rate=1e-2)
    base.update(kw)
    return TrainConfig(**base)


def scalars(log_root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(sorted(log_root.rglob("events.out.tfevents.*"))[0]))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A 2-epoch run scored at each save, with TensorBoard logs."""
    out = tmp_path_factory.mktemp("run")
    events = RecordingEvents()
    result = train(config(data, out / "lora", evaluate_every_n_epochs=1, logging_dir=str(out / "logs")), events)
    return out, result, events


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_scores_at_saves_go_to_tensorboard_and_leave_training_unchanged(data, run, tmp_path):
    out, result, events = run
    tags = scalars(out / "logs")
    for w in ("0.6", "0.8", "1"):
        assert [e for e, _ in tags[f"evaluation/fidelity/w{w}"]] == [1, 2]
        assert [e for e, _ in tags[f"evaluation/drift/w{w}"]] == [1, 2]
    messages = [e[1]["message"] for e in events.events if e[0] == "log" and "score" in e[1].get("message", "")]
    assert len(messages) == 2 and "fidelity" in messages[0] and "drift" in messages[0]
    plain = train(config(data, tmp_path / "plain"))
    from safetensors.torch import load_file

    for a, b in zip(plain.files, result.files, strict=True):  # scoring changed no weight, no RNG draw
        ta, tb = load_file(str(a)), load_file(str(b))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_evaluate_command_writes_table_json_csv_chart_and_leaves_files_alone(data, run, capsys):
    out, result, _events = run
    files = list(result.files)
    before = [_sha(f) for f in files]
    code = main(["evaluate", "--lora", str(files[0].parent / "t*.safetensors"), "--train_data_dir", str(data),
                 "--pretrained_model_name_or_path", "tiny", "--resolution", "64", "--caption_extension", ".txt",
                 "--output_dir", str(out / "eval"), "--eval_prompts", "a red ball", "a house"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "recommended:" in printed and "t-000001.safetensors" in printed
    data_json = json.loads((out / "eval" / "evaluation.json").read_text())
    assert len(data_json["scores"]) == 3 * 2 and data_json["recommendation"]["weight"] in (0.6, 0.8, 1.0)
    assert data_json["evaluation_set"] == {"images": 8, "source": "training images", "class_prompt": "shape",
                                           "prior_prompts": ["a red ball", "a house"], "reg_images": 0}
    rows = list(csv.DictReader((out / "eval" / "evaluation.csv").open()))
    assert [(r["epoch"], r["weight"]) for r in rows] == [("1", "0.6"), ("1", "0.8"), ("1", "1.0"),
                                                        ("2", "0.6"), ("2", "0.8"), ("2", "1.0")]
    assert Image.open(out / "eval" / "evaluation.png").size == (900, 360)
    assert [_sha(f) for f in files] == before


def test_evaluate_on_held_out_images_with_the_runs_split(data, run, capsys):
    out, result, _events = run
    code = main(["evaluate", "--lora", str(result.files[0]), "--train_data_dir", str(data), "--validation_split", "0.25",
                 "--pretrained_model_name_or_path", "tiny", "--resolution", "64", "--caption_extension", ".txt",
                 "--output_dir", str(out / "held"), "--weights", "1"])
    assert code == 0
    info = json.loads((out / "held" / "evaluation.json").read_text())["evaluation_set"]
    assert info["images"] == 2 and info["source"] == "held-out images"


def test_bad_input_gives_one_clear_error_each(data, run, tmp_path, capsys):
    out, result, _events = run
    empty = tmp_path / "empty" / "1_ohwx shape"
    empty.mkdir(parents=True)
    common = ["--pretrained_model_name_or_path", "tiny", "--resolution", "64", "--caption_extension", ".txt"]
    assert main(["evaluate", "--lora", str(result.files[0]), "--train_data_dir", str(empty.parent), *common]) == 2
    err = capsys.readouterr().err
    assert "1_ohwx shape: folder has no images" in err and "Traceback" not in err
    assert main(["evaluate", "--lora", str(result.files[0]), "--train_data_dir", str(data), *common,
                 "--eval_prompts", "ohwx on a beach"]) == 2
    err = capsys.readouterr().err
    assert "trigger word" in err and "Traceback" not in err
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 640),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(640, 4)}, str(other))
    assert main(["evaluate", "--lora", str(other), "--train_data_dir", str(data), *common]) == 2
    err = capsys.readouterr().err  # an SDXL-named module on an SD1.x-shaped model: both architectures named
    assert "only 0 of 1 LoRA modules match" in err and "this LoRA is for" in err and "the model is" in err


def test_annotated_cell_has_its_note_strip_and_the_mark_frame():
    from library.evaluation.render import MARK_COLOUR, annotate_cell

    plain = Image.new("RGB", (64, 64), (200, 200, 200))
    note = np.asarray(annotate_cell(plain, "F 0.70 D 0.18"))
    assert note[-3:].mean() < 80 and (note[0, :, :] == 200).all()  # dark strip (white text) at the bottom only
    framed = np.asarray(annotate_cell(plain, None, marked=True))
    assert (framed[0, :, :] == MARK_COLOUR).all() and (framed[32, 32] == 200).all()
    assert np.asarray(plain).max() == 200  # the cell itself is not drawn on


def test_grid_with_scores_marks_the_recommended_cell(data, run, capsys):
    from library.evaluation.render import MARK_COLOUR
    from library.evaluation.score_report import read_scores, score_notes

    out, result, _events = run
    files = [str(f) for f in result.files]
    assert main(["evaluate", "--lora", ",".join(files), "--train_data_dir", str(data), "--weights", "0.6, 1",
                 "--pretrained_model_name_or_path", "tiny", "--resolution", "64", "--caption_extension", ".txt",
                 "--output_dir", str(out / "forgrid")]) == 0
    scores, rec = read_scores(out / "forgrid" / "evaluation.json")
    note = score_notes(scores, rec)
    from library.evaluation.axes import CellSettings
    from library.sampling.pipeline import SampleRequest

    cell = CellSettings(SampleRequest(prompt="x"), "tiny", lora_file=rec.file, lora_weight=rec.weight)
    text, marked = note(cell)
    assert marked and text.startswith(f"F {rec.score.fidelity:.2f}")
    other = [s for s in scores if (s.file, s.weight) != (rec.file, rec.weight)][0]
    assert note(CellSettings(SampleRequest(prompt="x"), "tiny", lora_file=other.file, lora_weight=other.weight))[1] is False
    capsys.readouterr()
    assert main(["grid", "--pretrained_model_name_or_path", "tiny", "--prompt", "ohwx shape", "--steps", "2",
                 "--width", "64", "--height", "64", "--seed", "1", "--lora", ",".join(files), "--weights", "0.6, 1",
                 "--scores", str(out / "forgrid" / "evaluation.json"), "--output_dir", str(out / "grid"),
                 "--no_cells"]) == 0
    grid = np.asarray(Image.open(sorted((out / "grid").glob("xyz_grid-*.png"))[0]).convert("RGB"))
    assert (grid == MARK_COLOUR).all(axis=-1).sum() >= 4 * 60  # one framed 64 px cell


def test_gui_score_form_builds_the_evaluate_command_and_reads_its_results(data, run, tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e .[gui])")
    from gui.evaluate_tab import evaluate_command, score_summary
    from gui.safety import PathGuard
    from library.errors import ConfigError

    out, result, _events = run
    guard = PathGuard.from_dirs([out, data, tmp_path])
    form = {"model": "tiny", "lora": str(result.files[0]), "score_data": str(data), "score_reg": "",
            "output_dir": str(tmp_path / "grids"), "width": 64, "score_caption_ext": ".txt"}
    args = evaluate_command(form, guard)
    assert args[:3] == ["evaluate", "--pretrained_model_name_or_path", "tiny"]
    assert args[args.index("--train_data_dir") + 1] == str(data) and "--reg_data_dir" not in args
    assert main(args) == 0
    table, chart = score_summary(tmp_path / "grids" / "evaluation" / "evaluation.json")
    assert table.startswith("**Recommended:**") and table.count("\n| ") == 4  # header rule + 3 weights
    assert Path(chart).is_file()
    with pytest.raises(ConfigError, match="outside"):
        evaluate_command({**form, "score_data": "/etc"}, guard)
    with pytest.raises(ConfigError, match="Training images folder"):
        evaluate_command({**form, "score_data": " "}, guard)


def test_scores_at_saves_without_cached_latents_and_with_a_split(data, tmp_path):
    out = tmp_path / "nocache"
    events = RecordingEvents()
    train(config(data, out / "lora", max_train_epochs=1, cache_latents=False, validation_split=0.25,
                 evaluate_every_n_epochs=1, logging_dir=str(out / "logs")), events)
    tags = scalars(out / "logs")
    assert [e for e, _ in tags["evaluation/fidelity/w1"]] == [1]
    fidelity = tags["evaluation/fidelity/w1"][0][1]
    assert 0.0 < fidelity < 10.0 and fidelity != 1.0


def test_evaluate_with_reg_images_measures_their_drift(data, run, tmp_path):
    from library.world.bucket_dataset import make_shapes_dataset

    out, result, _events = run
    make_shapes_dataset(tmp_path / "r", count=2)
    reg = tmp_path / "reg"
    shutil.move(str(next((tmp_path / "r").iterdir())), reg / "1_shape")
    assert main(["evaluate", "--lora", str(result.files[-1]), "--train_data_dir", str(data), "--reg_data_dir", str(reg),
                 "--pretrained_model_name_or_path", "tiny", "--resolution", "64", "--caption_extension", ".txt",
                 "--weights", "1", "--output_dir", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["evaluation_set"]["reg_images"] == 2 and report["evaluation_set"]["images"] == 8
    row = report["scores"][0]
    assert row["reg_drift"] > 0
    assert row["drift"] == pytest.approx((row["class_drift"] + row["prior_drift"] + row["reg_drift"]) / 3)


def test_evaluate_reads_the_runs_config_file_and_flags_win(data, run, tmp_path, capsys):
    from library.config_io import write_config

    out, result, _events = run
    run_toml = write_config(config(data, out / "lora", validation_split=0.25), tmp_path / "run.toml")
    assert main(["evaluate", "--config_file", str(run_toml), "--lora", str(result.files[-1]), "--weights", "1",
                 "--output_dir", str(tmp_path / "a")]) == 0
    info = json.loads((tmp_path / "a" / "evaluation.json").read_text())["evaluation_set"]
    assert (info["images"], info["source"]) == (2, "held-out images")  # the run's split and seed
    assert main(["evaluate", "--config_file", str(run_toml), "--validation_split", "0", "--lora", str(result.files[-1]),
                 "--weights", "1", "--output_dir", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "evaluation.json").read_text())["evaluation_set"]["images"] == 8
    capsys.readouterr()
    assert main(["evaluate", "--lora", str(result.files[-1]), "--train_data_dir", str(data)]) == 2
    assert "--pretrained_model_name_or_path" in capsys.readouterr().err
