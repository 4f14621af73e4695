"""Run history, counted progress and epoch scores in the GUI (issues 22 and 18), without a browser."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from gui import history
from gui.progress import Progress, task_line
from gui.scores_view import run_scores, scores_markdown
from library.config import TrainConfig
from library.config_io import write_config


def _job_folder(root: Path, name: str, events: list[dict], out: Path | None = None, **cfg) -> Path:
    folder = root / f"job-{name}"
    folder.mkdir(parents=True)
    write_config(TrainConfig(pretrained_model_name_or_path="tiny", output_name=name,
                             output_dir=str(out) if out else None, **cfg), folder / "config.toml")
    (folder / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return folder


def _run_events(out: Path, name: str, stopped: bool = False) -> list[dict]:
    lora = out / f"{name}.safetensors"
    lora.write_bytes(b"x")
    return [{"event": "plan", "time": 100.0, "total_steps": 8, "epochs": 2, "text": "8 steps = 2 epoch(s)"},
            {"event": "step", "time": 101.0, "step": 4, "epoch": 1, "loss": 0.5},
            {"event": "epoch", "time": 102.0, "epoch": 1, "avg_loss": 0.25},
            {"event": "step", "time": 103.0, "step": 8, "epoch": 2, "loss": 0.125},
            {"event": "epoch", "time": 104.0, "epoch": 2, "avg_loss": 0.2},
            {"event": "save", "time": 104.5, "path": str(lora), "kind": "final"},
            {"event": "finish", "time": 105.0, "global_step": 8, "stopped": stopped, "files": [str(lora)]}]


def test_history_reads_runs_back_from_job_folders(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    jobs = tmp_path / "jobs"
    first = _job_folder(jobs, "alpha", _run_events(out, "alpha"), out, network_dim=8)
    time.sleep(0.02)
    second = _job_folder(jobs, "beta", _run_events(out, "beta", stopped=True), out)
    time.sleep(0.02)
    broken = _job_folder(jobs, "gamma", [{"event": "plan", "total_steps": 8},
                                          {"event": "error", "message": "CUDA out of memory at step 3"}], out)
    (jobs / "not-a-job").mkdir()  # no config.toml: ignored
    records = history.scan_runs(jobs)
    assert [r.folder for r in records] == [broken, second, first]  # newest first
    gamma, beta, alpha = records
    assert (alpha.state, beta.state, gamma.state) == ("finished", "stopped", "failed")
    assert alpha.final_loss == 0.2 and alpha.progress.step == 8 and alpha.progress.total_steps == 8
    assert alpha.config.network_dim == 8
    assert history.lora_files(alpha) == [str(out / "alpha.safetensors")]
    assert history.lora_files(gamma) == []
    table = history.runs_table(records)
    assert 'data-runs="3"' in table and table.index("gamma") < table.index("beta") < table.index("alpha")
    assert "0.2000" in table
    details = history.details_markdown(alpha)
    assert "final loss **0.2000**" in details and "8 steps = 2 epoch(s)" in details and "alpha.safetensors" in details
    assert "CUDA out of memory" in history.details_markdown(gamma)
    assert "network_dim = 8" in history.config_text(alpha)


def test_history_finds_grids_logs_and_a_loadable_config(tmp_path):
    out = tmp_path / "out"
    (out / "grids").mkdir(parents=True)
    (out / "grids" / "xyz_grid-0001.png").write_bytes(b"png")
    logs = tmp_path / "logs"
    logs.mkdir()
    folder = _job_folder(tmp_path / "jobs", "alpha", _run_events(out, "alpha"), out, logging_dir=str(logs),
                         resume=str(out / "alpha-state"))
    record = history.read_run(folder)
    assert history.grids(record) == [str(out / "grids" / "xyz_grid-0001.png")]
    assert history.log_dir(record) == str(logs)
    cfg = history.loadable_config(record)
    assert cfg.resume is None and cfg.output_name == "alpha" and cfg.logging_dir == str(logs)


def test_incomplete_run_is_not_called_finished(tmp_path):
    folder = _job_folder(tmp_path / "jobs", "killed", [{"event": "plan", "total_steps": 8},
                                                       {"event": "step", "step": 3, "loss": 0.5}])
    record = history.read_run(folder)
    assert record.state == "incomplete" and record.progress.step == 3


def test_caching_progress_counts_and_eta_then_steps_clear_it():
    p = Progress()
    p.apply({"event": "progress", "what": "caching latents", "done": 0, "total": 10}, now=100.0)
    assert p.task["done"] == 0 and p.task["eta_s"] is None
    p.apply({"event": "progress", "what": "caching latents", "done": 4, "total": 10}, now=102.0)
    assert p.task["s_per_item"] == pytest.approx(0.5) and p.task["eta_s"] == pytest.approx(3.0)
    assert task_line(p.task) == "caching latents 4/10 · 0.50 s each · ETA 0:03"
    p.apply({"event": "progress", "what": "caching latents (validation)", "done": 0, "total": 2}, now=103.0)
    assert p.task["what"] == "caching latents (validation)" and p.task["total"] == 2  # a new count starts
    p.apply({"event": "step", "step": 1, "loss": 0.1}, now=104.0)
    assert p.task is None


def _score(file: str, epoch: int, weight: float, fidelity: float, drift: float) -> dict:
    return {"file": file, "epoch": epoch, "weight": weight, "fidelity": fidelity, "drift": drift, "loss": fidelity,
            "base_loss": 1.0}


def test_scores_from_events_replace_a_rescored_epoch_and_render():
    p = Progress()
    p.apply({"event": "log", "message": "epoch 1 score",
             "scores": [_score("o/t-000001.safetensors", 1, 1.0, 0.9, 0.01)],
             "recommendation": {"file": "o/t-000001.safetensors", "epoch": 1, "weight": 1.0, "why": "only one"}})
    p.apply({"event": "log", "message": "epoch 2 score",
             "scores": [_score("o/t-000002.safetensors", 2, 1.0, 0.7, 0.02),
                        _score("o/t-000001.safetensors", 1, 1.0, 0.8, 0.01)],
             "recommendation": {"file": "o/t-000002.safetensors", "epoch": 2, "weight": 1.0, "why": "epoch 2 fits best"}})
    p.apply({"event": "log", "message": "a plain line"})
    assert len(p.scores) == 2
    scores, rec = run_scores(p, None)
    assert [s.epoch for s in scores] == [2, 1] and rec.epoch == 2 and rec.score is scores[0]
    text = scores_markdown(scores, rec)
    assert text.startswith("**Recommended:** epoch 2 fits best")
    assert "| **t-000002.safetensors** | **2** | **1** | **0.700** | **0.020** |" in text
    assert "| t-000001.safetensors | 1 | 1 | 0.800 | 0.010 |" in text


def test_scores_fall_back_to_the_runs_evaluation_json(tmp_path):
    out = tmp_path / "out"
    (out / "grids" / "evaluation").mkdir(parents=True)
    rows = [_score(str(out / "t-000001.safetensors"), 1, 0.8, 0.9, 0.01)]
    (out / "grids" / "evaluation" / "evaluation.json").write_text(json.dumps(
        {"scores": rows, "recommendation": {"file": rows[0]["file"], "epoch": 1, "weight": 0.8, "why": "the one"}}))
    scores, rec = run_scores(Progress(), TrainConfig(output_dir=str(out)))
    assert len(scores) == 1 and rec.weight == 0.8
    assert run_scores(Progress(), TrainConfig(output_dir=str(tmp_path))) == ([], None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch tiny run through the GUI's events file, caching latents and scoring every epoch."""
    from library.training.events import JsonLinesEvents
    from library.training.trainer import train
    from library.world.bucket_dataset import make_shapes_dataset

    root = tmp_path_factory.mktemp("hist")
    make_shapes_dataset(root / "a", count=4)
    shutil.move(str(next((root / "a").iterdir())), root / "train" / "1_ohwx shape")
    job = root / "jobs" / "job-1"
    cfg = TrainConfig(pretrained_model_name_or_path="tiny", train_data_dir=str(root / "train"),
                      output_dir=str(root / "out"), output_name="h", caption_extension=".txt", resolution="64",
                      train_batch_size=2, max_train_epochs=2, save_every_n_epochs=1, cache_latents=True, seed=3,
                      learning_rate=1e-2, evaluate_every_n_epochs=1)
    job.mkdir(parents=True)
    write_config(cfg, job / "config.toml")
    events = JsonLinesEvents(job / "progress.jsonl")
    try:
        train(cfg, events)
    finally:
        events.close()
    return job


def test_a_real_run_replays_with_caching_counts_and_epoch_scores(trained):
    lines = [json.loads(ln) for ln in (trained / "progress.jsonl").read_text().splitlines()]
    caching = [e for e in lines if e["event"] == "progress" and e["what"] == "caching latents"]
    assert caching[0]["what"] == "caching latents" and (caching[0]["done"], caching[-1]["done"]) == (0, 4)
    assert all(e["total"] == 4 for e in caching)
    assert lines.index(caching[-1]) < min(i for i, e in enumerate(lines) if e["event"] == "step")
    scoring = [e for e in lines if e["event"] == "progress" and e["what"] == "scoring epoch 1"]
    assert [e["done"] for e in scoring][-1] == 3 and all(e["total"] == 3 for e in scoring)  # 3 weights
    record = history.read_run(trained)
    assert record.state == "finished" and record.progress.step == 4
    assert record.progress.task is None
    scores, rec = run_scores(record.progress, record.config)
    assert sorted({s.epoch for s in scores}) == [1, 2] and {s.weight for s in scores} == {0.6, 0.8, 1.0}
    assert rec is not None and rec.epoch in (1, 2) and rec.why
    assert len(history.lora_files(record)) == 2


def test_cli_task_reads_counts_from_the_tqdm_bar(monkeypatch):
    """A child that draws a tqdm bar on stderr: the GUI sees 'n/total' as it goes, stdout comes back at the end."""
    import sys

    from gui import cli_runner

    script = ("import sys, time\nfrom tqdm import tqdm\n"
              "for _ in tqdm(range(4), desc='reg photos', unit='img', mininterval=0):\n    time.sleep(0.3)\n"
              "print('wrote 4 images')\n")
    monkeypatch.setattr(cli_runner, "lorasmith_argv", lambda *args: [sys.executable, "-c", script])
    task = cli_runner.CliTask(["reg", "photos"], timeout=60)
    seen = set()
    while task.running:
        if task.task:
            seen.add(task.task["done"])
        time.sleep(0.05)
    out, _err = task.finish()
    assert out == ["wrote 4 images"]
    assert task.task == {"what": "reg photos", "done": 4, "total": 4, "elapsed_s": task.task["elapsed_s"], "eta_s": 0.0}
    assert len(seen - {4}) >= 1  # at least one count before the end
    html = cli_runner.task_html(task.task, "ls-reg-task")
    assert 'data-done="4" data-total="4"' in html and "reg photos 4/4 · ETA 0:00" in html

    monkeypatch.setattr(cli_runner, "lorasmith_argv", lambda *args: [sys.executable, "-c", "import sys; sys.exit(3)"])
    failing = cli_runner.CliTask(["grid"], timeout=60)
    with pytest.raises(cli_runner.LorasmithError, match="exit code 3"):
        failing.finish()


def test_crop_reports_counts_through_a_thread_task(tmp_path):
    from PIL import Image

    from dataset_tools.crop import CropOptions, crop_folder, parse_ratio
    from gui.cli_runner import ThreadTask

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.new("RGB", (80 + i, 60), (i * 40, 90, 160)).save(src / f"p{i}.png")
    calls = []

    def counting(*args, progress, **kwargs):
        return crop_folder(*args, progress=lambda d, t: (calls.append((d, t)), progress(d, t)), **kwargs)

    task = ThreadTask("crop", counting, src, tmp_path / "dst", CropOptions(ratio=parse_ratio("1:1")))
    run = task.result()
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert task.task["done"] == 3 and task.task["total"] == 3 and task.task["eta_s"] == 0.0
    assert len(run.written) == 3
