"""Ctrl-C / SIGTERM on a real `train_network.py` subprocess: graceful first signal, immediate second."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(shapes_data: Path) -> Path:
    return shapes_data


def start(data: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "train_network.py"), "--pretrained_model_name_or_path", "tiny",
           "--train_data_dir", str(data), "--output_dir", str(out), "--output_name", "t", "--caption_extension", ".txt",
           "--resolution", "64", "--train_batch_size", "2", "--max_train_epochs", "500", "--cache_latents",
           "--seed", "1", "--learning_rate", "1e-3", "--progress_file", str(out / "progress.jsonl")]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(proc: subprocess.Popen, progress: Path, steps: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended early (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
        if progress.exists():
            done = [json.loads(line) for line in progress.read_text().splitlines() if '"event": "step"' in line]
            if len(done) >= steps:
                return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("training made no progress")


def check_outputs(out: Path) -> list[str]:
    """Every visible .safetensors loads; no temp file or folder is left."""
    names = sorted(p.name for p in out.rglob("*"))
    for path in out.rglob("*.safetensors"):
        load_file(str(path))
    assert not [n for n in names if n.endswith(".tmp") or n.endswith(".old")], names
    return names


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_finishes_the_step_saves_and_exits_130(data: Path, tmp_path: Path, sig: int) -> None:
    proc = start(data, tmp_path)
    wait_for_steps(proc, tmp_path / "progress.jsonl", 2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "stopping after this step" in err
    names = check_outputs(tmp_path)
    assert "t-interrupted.safetensors" in names and "t.safetensors" not in names
    state = json.loads((tmp_path / "t-state" / "state.json").read_text())
    events = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    last_step = max(e["step"] for e in events if e["event"] == "step")
    assert state["global_step"] == last_step >= 2
    assert events[-1]["event"] == "finish" and events[-1]["stopped"] is True


def test_second_signal_stops_at_once_without_damage(data: Path, tmp_path: Path) -> None:
    proc = start(data, tmp_path)
    wait_for_steps(proc, tmp_path / "progress.jsonl", 1)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "stopping now" in err or "stopping after this step" in err
    check_outputs(tmp_path)


def test_signal_arriving_inside_commands_take_does_not_deadlock() -> None:
    """The handler runs in the main thread, possibly while `take` holds the commands lock."""
    from library.training.events import Commands
    from library.training.signals import SignalStop

    commands = Commands()
    handler = SignalStop(commands)
    with commands._lock:  # as if the signal interrupted take()
        handler(signal.SIGINT, None)
    assert commands.take("stop")
