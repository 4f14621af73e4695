"""kill -9 at random moments: every visible file is a complete version or absent, never truncated.

Two bounded loops: a real `train_network.py` run saving a LoRA and a state folder
every step (killed, then resumed with --resume latest, a few times), and a
writer process hammering the same atomic write paths (killed many times, as
starting the trainer is too slow to do that 20 times within a minute).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file


REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
STATE_FILES = ["config.json", "network.safetensors", "state.json", "train_state.pt"]


def verify(out: Path) -> int:
    """Check every visible file and state folder; return how many LoRA/state entries were seen."""
    seen = 0
    for path in out.iterdir():
        if path.name.startswith("."):  # temp names: hidden, never taken for a real file
            # ours only (`.NAME.lorasmith-PID-XXXX.tmp`/`.old`, the lock): nothing a takeover could not recognise
            assert path.name == ".lorasmith-train.lock" or (
                ".lorasmith-" in path.name and path.name.endswith((".tmp", ".old"))), path.name
            continue
        if path.suffix == ".safetensors":
            load_file(str(path))
            seen += 1
        elif path.name.endswith("-state"):
            assert sorted(p.name for p in path.iterdir()) == STATE_FILES, path
            load_file(str(path / "network.safetensors"))
            json.loads((path / "state.json").read_text())
            seen += 1
    return seen


WRITER = r"""
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
from library.fileio import atomic_path
from library.training.state import atomic_folder
out = Path(sys.argv[1]); i = 0
print("ready", flush=True)
while True:
    t = {"w": torch.full((256, 256), float(i))}
    with atomic_path(out / f"w{i % 3}.safetensors") as tmp:
        save_file(t, str(tmp))
    with atomic_folder(out / f"s{i % 2}-state") as tmp:
        for name in ("config.json", "state.json"):
            (tmp / name).write_text("{}")
        save_file(t, str(tmp / "network.safetensors")); torch.save({"i": i}, tmp / "train_state.pt")
    i += 1
"""


def test_kill_9_writer_never_leaves_a_truncated_file(tmp_path: Path) -> None:
    rnd = random.Random(0)
    started = time.monotonic()
    kills = 0
    while kills < 12 and time.monotonic() - started < 60:  # bounded; a loaded machine starts Python slowly
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPO, env=ENV,
                                stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline().strip()
        assert first == "ready", f"writer did not start: {first!r}"
        time.sleep(rnd.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        verify(tmp_path)
    assert kills >= 3, f"only {kills} kills in {time.monotonic() - started:.0f}s"
    assert verify(tmp_path) >= 3


@pytest.fixture(scope="module")
def data(shapes_data: Path) -> Path:
    return shapes_data


def train_cmd(data: Path, out: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, str(REPO / "train_network.py"), "--pretrained_model_name_or_path", "tiny",
           "--train_data_dir", str(data), "--output_dir", str(out), "--output_name", "t", "--caption_extension", ".txt",
           "--resolution", "64", "--train_batch_size", "2", "--max_train_epochs", "500", "--cache_latents",
           "--seed", "1", "--learning_rate", "1e-3", "--save_every_n_steps", "1", "--save_last_n_steps", "3",
           "--save_state", "--progress_file", str(out / f"progress{time.monotonic_ns()}.jsonl")]
    return cmd + (["--resume", "latest"] if resume else [])


def wait_for_save(proc: subprocess.Popen, progress: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
        if progress.exists() and '"event": "save"' in progress.read_text():
            return
        time.sleep(0.05)
    proc.kill()
    pytest.fail("training saved nothing")


@pytest.mark.slow  # several training processes killed and resumed: ~24 s of CPU
def test_kill_9_training_then_resume_latest(data: Path, tmp_path: Path) -> None:
    rnd = random.Random(1)
    steps = []
    for round_ in range(3):
        cmd = train_cmd(data, tmp_path, resume=round_ > 0)
        progress = Path(cmd[cmd.index("--progress_file") + 1])
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for_save(proc, progress)
        time.sleep(rnd.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert verify(tmp_path) >= 1
        # the stale lock of the killed run does not block the next one
        saved = [json.loads(line) for line in progress.read_text().splitlines() if '"event": "save"' in line]
        steps.append(max(e["step"] for e in saved))
    assert steps == sorted(steps), f"resume went backwards: {steps}"
