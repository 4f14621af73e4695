"""`lorasmith sweep`: --vary parsing and expansion, names, checks, resume after an interrupt, ranking files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from library.config import TrainConfig
from library.errors import ConfigError
from library.sweep.manifest import FINISHED, STOPPED, load_manifest
from library.sweep.runner import prepare_sweep, run_sweep
from library.sweep.variants import expand, parse_vary, variant_name
from library.training.events import Commands, Events


def base_config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path="tiny", train_data_dir=str(data), output_dir=str(out), output_name="t",
                caption_extension=".txt", resolution="64", train_batch_size=2, max_train_epochs=2,
                save_every_n_epochs=1, cache_latents=True, seed=7, learning_rate=1e-3, optimizer_type="AdamW",
                validation_split=0.25)
    base.update(kw)
    return TrainConfig(**base)


# --- --vary and expansion ----------------------------------------------------------------

def test_vary_values_are_typed_and_combinations_expand_in_order(tmp_path: Path) -> None:
    vary = parse_vary(["network_dim=8,16,32", "learning_rate=0.5,1.0"])
    assert vary == [("network_dim", [8, 16, 32]), ("learning_rate", [0.5, 1.0])]
    variants = expand(TrainConfig(output_name="me", output_dir=str(tmp_path)), vary, tmp_path / "sw")
    assert [v.name for v in variants] == ["dim-8_lr-0.5", "dim-8_lr-1", "dim-16_lr-0.5", "dim-16_lr-1",
                                          "dim-32_lr-0.5", "dim-32_lr-1"]
    v = variants[3]
    assert (v.config.network_dim, v.config.learning_rate) == (16, 1.0)
    assert v.config.output_dir == str(tmp_path / "sw" / "dim-16_lr-1")
    assert v.config.output_name == "me_dim-16_lr-1"


def test_json_list_values_and_names_of_odd_values() -> None:
    vary = parse_vary(['resolution=["512","512,768"]', "optimizer_type=AdamW,Prodigy", "flip_aug=true,false",
                       "unet_lr=1e-4,0.0002"])
    assert vary[0] == ("resolution", ["512", "512,768"])
    assert vary[2] == ("flip_aug", [True, False])
    assert variant_name({"resolution": "512,768", "flip_aug": False, "unet_lr": 1e-4, "optimizer_type": "Prodigy"}) == \
        "res-512+768_flip_aug-off_unet_lr-0.0001_opt-Prodigy"


def test_bad_vary_syntax_is_one_error_naming_each_item() -> None:
    with pytest.raises(ConfigError) as info:
        parse_vary(["network_dim", "netwrk_dim=8", "network_dim=8,,16", "learning_rate=fast,0.1",
                    "output_dir=a,b", "seed=1,1", "network_alpha=1", "network_alpha=2", "resolution=[512"])
    text = str(info.value)
    assert "'network_dim': write FIELD=VALUE1,VALUE2" in text
    assert "netwrk_dim: unknown field (did you mean 'network_dim'?)" in text
    assert "network_dim: an empty value" in text
    assert "learning_rate" in text and "'fast' is not a valid float" in text
    assert "output_dir: set by the sweep itself" in text
    assert "seed: '1' is given twice" in text
    assert "network_alpha: given twice" in text
    assert "resolution: '[512' is not a JSON list" in text


def test_no_vary_and_too_many_variants_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one --vary"):
        expand(TrainConfig(), [], tmp_path)
    with pytest.raises(ConfigError, match="4096 variants"):
        expand(TrainConfig(), parse_vary([f"{f}=1,2,3,4,5,6,7,8" for f in ("seed", "network_dim", "keep_tokens", "vae_batch_size")]),
               tmp_path)


def test_a_bad_value_names_the_variant_and_field_before_anything_runs(shapes_data: Path, tmp_path: Path) -> None:
    base = base_config(shapes_data, tmp_path / "sw")
    with pytest.raises(ConfigError) as info:
        prepare_sweep(base, parse_vary(["network_dim=4,0", "learning_rate=0.001,-1"]), tmp_path / "sw")
    text = str(info.value)
    assert "nothing was started" in text
    assert "variant dim-0_lr-0.001: network_dim: 0 is out of range" in text
    assert "variant dim-4_lr--1: learning_rate: -1.0 is out of range" in text
    assert "variant dim-4_lr-0.001:" not in text
    assert not (tmp_path / "sw").exists()
    with pytest.raises(ConfigError, match="inside train_data_dir"):
        prepare_sweep(base, parse_vary(["network_dim=4"]), shapes_data / "sweep")


# --- running, resuming, ranking -------------------------------------------------------------

class StopAfter(Events):
    """Ask the trainer to stop after `step` steps of the variant it is given to."""

    def __init__(self, commands: Commands, step: int) -> None:
        self.commands, self.step = commands, step

    def on_step(self, info) -> None:
        if info["step"] >= self.step:
            self.commands.request("stop")


VARY = ["network_dim=2,4"]


@pytest.fixture(scope="module")
def full_sweep(shapes_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    manifest, variants = prepare_sweep(base_config(shapes_data, out), parse_vary(VARY), out)
    outcome = run_sweep(manifest, variants, log=lambda _: None)
    assert not outcome.stopped and len(outcome.finished) == 2
    return out


def test_every_variant_trains_into_its_own_folder(full_sweep: Path) -> None:
    manifest = load_manifest(full_sweep / "sweep.json")
    assert [(r.name, r.status) for r in manifest.variants] == [("dim-2", FINISHED), ("dim-4", FINISHED)]
    for name, dim in (("dim-2", 2), ("dim-4", 4)):
        files = sorted(p.name for p in (full_sweep / name).glob("*.safetensors"))
        assert files == [f"t_{name}-000001.safetensors", f"t_{name}.safetensors"]
        down = [v for k, v in load_file(str(full_sweep / name / f"t_{name}.safetensors")).items() if k.endswith("lora_down.weight")]
        assert {t.shape[0] for t in down} == {dim}
    rec = manifest.record("dim-4")
    assert [Path(f).name for f in rec.files] == ["t_dim-4-000001.safetensors", "t_dim-4.safetensors"]
    assert [e for e, _ in rec.validation_losses] == [1, 2]


def test_interrupted_sweep_skips_finished_variants_and_resumes_the_stopped_one(
        shapes_data: Path, full_sweep: Path, tmp_path: Path) -> None:
    base = base_config(shapes_data, tmp_path)
    manifest, variants = prepare_sweep(base, parse_vary(VARY), tmp_path)
    commands = Commands()
    outcome = run_sweep(manifest, variants, commands=commands, log=lambda _: None,
                        events_for=lambda v: StopAfter(commands, 1) if v.name == "dim-4" else Events())
    assert outcome.stopped
    saved = load_manifest(tmp_path / "sweep.json")
    assert [(r.name, r.status) for r in saved.variants] == [("dim-2", FINISHED), ("dim-4", STOPPED)]
    first = tmp_path / "dim-2" / "t_dim-2.safetensors"
    stamp = first.stat().st_mtime_ns

    lines: list[str] = []
    manifest, variants = prepare_sweep(base, parse_vary(VARY), tmp_path)  # the same command again
    outcome = run_sweep(manifest, variants, log=lines.append)
    assert not outcome.stopped
    assert lines[0] == "[1/2] dim-2: finished before, skipped"
    assert lines[1].startswith("[2/2] dim-4: resuming from its latest saved state")
    assert first.stat().st_mtime_ns == stamp
    assert [r.status for r in load_manifest(tmp_path / "sweep.json").variants] == [FINISHED, FINISHED]
    # the resumed variant ends where the never-interrupted sweep's did, bit for bit
    a = load_file(str(tmp_path / "dim-4" / "t_dim-4.safetensors"))
    b = load_file(str(full_sweep / "dim-4" / "t_dim-4.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_different_sweep_in_the_same_folder_is_refused(shapes_data: Path, full_sweep: Path) -> None:
    with pytest.raises(ConfigError) as info:
        prepare_sweep(base_config(shapes_data, full_sweep), parse_vary(["network_dim=2,8"]), full_sweep)
    assert "holds another sweep" in str(info.value) and "varied values" in str(info.value)
    with pytest.raises(ConfigError, match="max_train_epochs: 2 -> 3"):
        prepare_sweep(base_config(shapes_data, full_sweep, max_train_epochs=3), parse_vary(VARY), full_sweep)


def test_ranking_by_validation_loss_writes_table_json_and_csv(shapes_data: Path, full_sweep: Path) -> None:
    from library.sweep.cli import rank_and_report

    manifest, variants = prepare_sweep(base_config(shapes_data, full_sweep), parse_vary(VARY), full_sweep)
    lines: list[str] = []
    paths = rank_and_report(manifest, variants, full_sweep, rank_by="validation_loss", log=lines.append)
    finals = {r.name: r.validation_losses[-1][1] for r in manifest.variants}
    order = sorted(finals, key=finals.get)
    doc = json.loads(paths["json"].read_text())
    assert doc["rank_by"] == "validation_loss" and doc["varied"] == ["network_dim"]
    assert [(v["rank"], v["name"]) for v in doc["variants"]] == [(1, order[0]), (2, order[1])]
    assert doc["variants"][0]["value"] == pytest.approx(finals[order[0]])
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["variant"] for r in rows] == order and rows[0]["network_dim"] == order[0].split("-")[1]
    assert float(rows[0]["final_validation_loss"]) == pytest.approx(finals[order[0]])
    table = lines[0].splitlines()
    assert "final validation loss" in table[0] and table[3].split()[:2] == ["1", order[0]]
    assert table[-1].startswith(f"best: {order[0]}: lowest validation loss at epoch")


def test_ranking_by_scores_scores_every_epoch_of_every_variant(shapes_data: Path, full_sweep: Path) -> None:
    from library.sweep.cli import rank_and_report

    manifest, variants = prepare_sweep(base_config(shapes_data, full_sweep), parse_vary(VARY), full_sweep)
    paths = rank_and_report(manifest, variants, full_sweep, rank_by="scores", weights=(0.5, 1.0), grid=True,
                            log=lambda _: None)
    doc = json.loads(paths["json"].read_text())
    assert sorted(v["rank"] for v in doc["variants"]) == [1, 2]
    for v in doc["variants"]:
        assert sorted((Path(s["file"]).name, s["weight"]) for s in v["scores"]) == sorted(
            (f"t_{v['name']}{suffix}.safetensors", w) for suffix in ("-000001", "") for w in (0.5, 1.0))
        assert v["best_file"] and v["fidelity"] is not None and v["why"]
    first, second = doc["variants"]
    if first["under_threshold"] == second["under_threshold"]:
        assert first["value"] <= second["value"]
    scores = list(csv.DictReader(paths["scores_csv"].open()))
    assert len(scores) == 8 and {"variant", "network_dim", "file", "weight", "fidelity", "drift"} <= set(scores[0])
    from PIL import Image

    with Image.open(paths["chart"]) as chart:
        assert chart.size[0] == 960
    for name in ("dim-2", "dim-4"):  # each variant's own evaluation report beside its files
        report = json.loads((full_sweep / name / "evaluation.json").read_text())
        assert report["recommendation"]["file"] == next(v["best_file"] for v in doc["variants"] if v["name"] == name)
    with Image.open(paths["grid"]) as grid:  # one 64-px cell per variant, side by side
        assert grid.size[0] >= 2 * 64 and paths["grid"].parent.name == "best_grid"
    assert len(list((paths["grid"].parent / "cells").glob("*.png"))) == 2


def test_cli_dry_run_lists_variants_and_bad_vary_exits_2(shapes_data: Path, tmp_path: Path, capsys) -> None:
    from library.cli import main
    from library.config_io import write_config

    base = write_config(base_config(shapes_data, tmp_path / "out"), tmp_path / "base.toml")
    assert main(["sweep", "--config", str(base), "--vary", "network_dim=2,4", "--vary", "learning_rate=0.5,1",
                 "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "4 variant(s)" in out and "dim-4_lr-0.5: network_dim=4, learning_rate=0.5 (pending)" in out
    assert main(["sweep", "--config", str(base), "--vary", "network_dim:2,4"]) == 2
    assert "write FIELD=VALUE1,VALUE2" in capsys.readouterr().err


def test_sweep_file_form(shapes_data: Path, tmp_path: Path, capsys) -> None:
    from library.cli import main
    from library.config_io import write_config

    write_config(base_config(shapes_data, tmp_path / "out"), tmp_path / "base.toml")
    (tmp_path / "sweep.toml").write_text('config = "base.toml"\nrank_by = "validation_loss"\n\n[vary]\n'
                                         'network_dim = [2, 4]\nlearning_rate = [0.5]\n', encoding="utf-8")
    assert main(["sweep", "--sweep_file", str(tmp_path / "sweep.toml"), "--vary", "network_dim=8", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "1 variant(s)" in out and "dim-8_lr-0.5" in out  # the command line's --vary replaced the file's values
    (tmp_path / "bad.toml").write_text('config = "base.toml"\nrank = 1\n[vary]\nnetwork_dimm = [2]\n', encoding="utf-8")
    assert main(["sweep", "--sweep_file", str(tmp_path / "bad.toml"), "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'rank'" in err and "network_dimm: unknown field (did you mean 'network_dim'?)" in err


def test_cli_sweep_trains_ranks_and_skips_on_a_second_run(shapes_data: Path, tmp_path: Path, capsys) -> None:
    from library.cli import main
    from library.config_io import write_config

    base = write_config(base_config(shapes_data, tmp_path / "out", max_train_epochs=1), tmp_path / "base.toml")
    argv = ["sweep", "--config", str(base), "--vary", "network_dim=2,4", "--rank_by", "validation_loss", "--no_grid"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Sweep ranking by the final validation loss" in out
    rows = list(csv.DictReader((tmp_path / "out" / "ranking.csv").open()))
    assert sorted(r["variant"] for r in rows) == ["dim-2", "dim-4"] and {r["rank"] for r in rows} == {"1", "2"}
    assert main(argv + ["--rank_only"]) == 0  # re-rank without training
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "[1/2] dim-2: finished before, skipped" in out and "[2/2] dim-4: finished before, skipped" in out


def test_a_variant_killed_before_any_saved_state_is_trained_again(shapes_data: Path, tmp_path: Path) -> None:
    from library.sweep.manifest import RUNNING

    base = base_config(shapes_data, tmp_path, max_train_epochs=1)
    manifest, variants = prepare_sweep(base, parse_vary(["network_dim=2"]), tmp_path)
    manifest.record("dim-2").status = RUNNING  # what a sweep killed hard (no Ctrl-C) leaves behind
    manifest.save()
    lines: list[str] = []
    manifest, variants = prepare_sweep(base, parse_vary(["network_dim=2"]), tmp_path)
    run_sweep(manifest, variants, log=lines.append)
    assert lines[0] == "[1/1] dim-2: no saved state from its earlier attempt (running); training it from the start"
    assert load_manifest(tmp_path / "sweep.json").record("dim-2").status == FINISHED


def test_sweep_refuses_a_multi_process_launch(tmp_path: Path, monkeypatch, capsys) -> None:
    from library.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["sweep", "--output_dir", str(tmp_path), "--vary", "network_dim=2", "--dry_run"]) == 2
    assert "runs in one process" in capsys.readouterr().err
