"""Sweeps from the GUI: --vary lines checked like the CLI, a queued sweep job, its progress and ranking (no browser)."""
from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

from gui import history, run_view
from gui.jobs import FINISHED, RUNNING, JobManager
from gui.sweep_view import (
    ranking_markdown,
    ranking_path,
    sweep_args,
    sweep_task,
    variant_count,
)
from library.config import TrainConfig
from library.errors import ConfigError

# A stand-in `lorasmith sweep`: prints what the real one prints per variant, a step bar, then writes ranking.json.
FAKE_SWEEP = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    cfg, args = sys.argv[1], sys.argv[2:]
    out = Path([ln.split('=', 1)[1].strip().strip('"') for ln in open(cfg) if ln.startswith('output_dir')][0])
    print("sweep args", *args, flush=True)
    for i, name in enumerate(("network_dim-4", "network_dim-8"), 1):
        print(f"[{i}/2] {name}: training", flush=True)
        for step in range(1, 4):
            time.sleep(0.15)
            sys.stderr.write(f"\\r{int(step / 3 * 100):3d}%|##   | {step}/3 [00:0{step}<00:0{3 - step}, 1.00step/s]")
            sys.stderr.flush()
        print(f"\\n[{i}/2] {name}: finished (3 steps)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ranking.json").write_text(json.dumps({"rank_by": "scores", "varied": ["network_dim"], "note": "",
        "variants": [{"rank": 1, "name": "network_dim-8", "values": {"network_dim": 8}, "status": "finished",
                      "measure": "fidelity", "value": 0.61, "best_epoch": 2, "best_weight": 0.8, "drift": 0.01,
                      "why": "epoch 2 at weight 0.8 fits best"},
                     {"rank": 2, "name": "network_dim-4", "values": {"network_dim": 4}, "status": "finished",
                      "measure": "fidelity", "value": 0.7, "best_epoch": 1, "best_weight": 1.0, "drift": 0.02,
                      "why": ""}]}))
""")


def test_sweep_args_are_checked_like_the_cli():
    assert sweep_args("network_dim=8,16\n\nlearning_rate=0.5,1.0\n", "validation_loss", grid=False) == [
        "--vary", "network_dim=8,16", "--vary", "learning_rate=0.5,1.0", "--rank_by", "validation_loss", "--no_grid"]
    assert variant_count("network_dim=8,16\nlearning_rate=0.5,1.0") == 4
    with pytest.raises(ConfigError, match="Vary is empty"):
        sweep_args("  \n")
    with pytest.raises(ConfigError) as info:
        sweep_args("network_dim=8,x\nno_such_field=1,2")
    text = str(info.value) + " ".join(info.value.problems)
    assert "network_dim" in text and "no_such_field" in text
    with pytest.raises(ConfigError, match="at least two values"):
        sweep_args("network_dim=8")


def test_sweep_task_from_its_log():
    log = ("sweep in /o: 3 variant(s), seed 1\n[1/3] a: training\n 50%|##  | 2/4 [00:02<00:02, 1.00step/s]\n"
           "[1/3] a: finished (4 steps)\n[2/3] b: training\n 25%|#   | 1/4 [00:01<00:03, 1.00step/s]")
    task = sweep_task(log)
    assert task == {"what": "variant 2/3 b (step 1/4)", "done": 1, "total": 3, "eta_s": 3.0}
    assert sweep_task("[3/3] c: finished (4 steps)")["done"] == 3
    assert sweep_task("nothing yet") is None
    scoring = sweep_task("[3/3] c: finished (4 steps)\nscoring a: 2 file(s) x 3 weight(s)\nscoring b: 2 file(s)")
    assert scoring == {"what": "all variants trained; scoring b", "done": 3, "total": 3, "eta_s": None}


def test_ranking_table_best_first(tmp_path):
    (tmp_path / "ranking.json").write_text(json.dumps({"rank_by": "scores", "varied": ["network_dim"], "variants": [
        {"rank": 1, "name": "d8", "values": {"network_dim": 8}, "status": "finished", "value": 0.5, "best_epoch": 3,
         "best_weight": 0.8, "drift": 0.012, "why": "lowest fidelity under the drift threshold"},
        {"rank": None, "name": "d16", "values": {"network_dim": 16}, "status": "failed", "value": None}]}))
    (tmp_path / "ranking.png").write_bytes(b"png")
    assert ranking_path(TrainConfig(output_dir=str(tmp_path))) == tmp_path / "ranking.json"
    text, chart = ranking_markdown(tmp_path / "ranking.json")
    assert "**Best:** d8: lowest fidelity under the drift threshold" in text
    assert "| 1 | d8 | 8 | finished | 0.5 | 3 | 0.8 | 0.012 |" in text
    assert "| - | d16 | 16 | failed | - | - | - | - |" in text
    assert chart == str(tmp_path / "ranking.png")
    assert ranking_path(TrainConfig(output_dir=str(tmp_path / "none"))) is None


def test_sweep_job_runs_in_the_queue_and_shows_its_ranking(tmp_path):
    script = tmp_path / "fake_sweep.py"
    script.write_text(FAKE_SWEEP)
    jm = JobManager(tmp_path / "jobs", poll_interval=None,
                    sweep=lambda c, args: [sys.executable, str(script), str(c), *args])
    out = tmp_path / "out"
    job = jm.submit(TrainConfig(output_name="s", output_dir=str(out)), name="sweep s", kind="sweep",
                    args=sweep_args("network_dim=4,8"))
    assert job.state == RUNNING
    seen = set()
    deadline = time.monotonic() + 30
    while job.state == RUNNING and time.monotonic() < deadline:
        jm.poll()
        if job.progress.task:
            seen.add(job.progress.task["what"])
        time.sleep(0.05)
    assert job.state == FINISHED, job.log_tail()
    assert any(w.startswith("variant 2/2 network_dim-8 (step") for w in seen)
    assert "--vary network_dim=4,8 --rank_by scores" in job.log_tail()
    assert run_view.state_label(job, jm).startswith("finished sweep — ranking in")
    assert 'data-kind="sweep"' in run_view.progress_html(job) and 'data-fraction="1.0000"' in run_view.progress_html(job)
    record = history.read_run(job.folder)
    assert record.kind == "sweep" and record.state == "finished"
    text, _chart = ranking_markdown(ranking_path(record.config))
    assert "**Best:** network_dim-8" in text
