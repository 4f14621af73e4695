"""Data-parallel training: `accelerate launch --num_processes 2 --cpu` (gloo) on the tiny model."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from library.training.distributed import rounds_per_epoch, shard_index

REPO = Path(__file__).resolve().parents[1]


def test_shards_cover_the_epoch_and_wrap_like_even_batches() -> None:
    n, world = 5, 2
    rounds = rounds_per_epoch(n, world)
    seen = [[shard_index(r, rank, world, n) for rank in range(world)] for r in range(rounds)]
    assert rounds == 3 and seen == [[0, 1], [2, 3], [4, 0]]
    assert rounds_per_epoch(4, 1) == 4 and [shard_index(r, 0, 1, 4) for r in range(4)] == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def data(shapes_data: Path) -> Path:
    return shapes_data


def args(data: Path, out: Path) -> list[str]:
    return ["--pretrained_model_name_or_path", "tiny", "--train_data_dir", str(data), "--output_dir", str(out),
            "--output_name", "t", "--caption_extension", ".txt", "--resolution", "64", "--train_batch_size", "1",
            "--max_train_epochs", "1", "--cache_latents", "--seed", "4", "--learning_rate", "1e-3",
            "--network_train_unet_only", "--logging_dir", str(out / "logs")]


@pytest.mark.slow  # two training processes under accelerate launch: ~34 s of CPU
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not installed")
def test_two_process_run_shards_batches_and_writes_one_set_of_files(data: Path, tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    two = tmp_path / "two"
    # accelerate 1.x runs one process for `--cpu`; `--multi_gpu` starts torch.distributed.run's two
    # processes, which pick gloo on a machine without CUDA.
    proc = subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
                           str(REPO / "train_network.py"), *args(data, two)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = tmp_path / "one"
    single = subprocess.run([sys.executable, str(REPO / "train_network.py"), *args(data, one)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    # one set of files (rank 0 only), one TensorBoard run
    assert sorted(p.name for p in two.iterdir()) == ["logs", "t.safetensors"]
    assert len(list((two / "logs").iterdir())) == 1
    with safe_open(str(two / "t.safetensors"), "pt") as f:
        meta2 = f.metadata()
    with safe_open(str(one / "t.safetensors"), "pt") as f:
        meta1 = f.metadata()
    # 4 batches of 1: 4 steps alone, 2 steps with 2 processes (sd-scripts divides by num_processes)
    assert meta1["ss_steps"] == "4" and meta2["ss_steps"] == "2"
    assert meta2.get("ss_num_processes", "2") == "2"
    assert meta2["ss_total_batch_size"] == "2"
    a, b = load_file(str(one / "t.safetensors")), load_file(str(two / "t.safetensors"))
    assert a.keys() == b.keys()
    # both trained from the same initial network; different step counts give different (finite) weights
    assert all(torch.isfinite(t).all() for t in b.values())
    ups = [k for k in b if k.endswith("lora_up.weight")]
    assert any(b[k].abs().sum() > 0 for k in ups), "the 2-process run did not train"
    assert any(not torch.equal(a[k], b[k]) for k in ups)
