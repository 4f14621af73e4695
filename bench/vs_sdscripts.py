#!/usr/bin/env python
"""lorasmith and a user-provided sd-scripts checkout on the same case, interleaved, with their ratio.

Nothing is installed: sd-scripts runs from its own checkout (`--sdscripts DIR`) with its own
interpreter (`--python PY`, the venv you made for it). Both get the same sd-scripts flags
(lorasmith's train_network.py takes them) on the same dataset and model file, one process per
run, alternating lorasmith / sd-scripts so both see the same machine load. Each side runs
`--short` and `--long` optimizer steps; the difference in wall time over the difference in
steps is the time a step takes, with loading, caching and saving cancelled out. Peak RSS is
each process's own (os.wait4).

The model is SD1.5-sized with random weights from the shipped config, saved once as a
single-file fp16 checkpoint: sd-scripts builds its UNet with SD1.5's fixed channel widths
(library/original_unet.py), so it cannot load the built-in tiny model. The default case is
small (64 px, batch 1) so a CPU round takes minutes, not hours.

    python bench/vs_sdscripts.py --sdscripts /path/to/sd-scripts --python /path/to/venv/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def common_flags(model: Path, data: Path, out: Path, args: argparse.Namespace, steps: int) -> list[str]:
    """sd-scripts' train_network.py flags, which lorasmith's train_network.py takes as they are."""
    flags = ["--pretrained_model_name_or_path", str(model), "--train_data_dir", str(data), "--output_dir", str(out),
             "--output_name", "bench", "--resolution", str(args.resolution), "--train_batch_size", str(args.batch),
             "--max_train_steps", str(steps), "--network_module", "networks.lora", "--network_dim", "4",
             "--network_alpha", "1", "--optimizer_type", "AdamW", "--learning_rate", "1e-4", "--cache_latents",
             "--caption_extension", ".txt", "--seed", "0", "--save_model_as", "safetensors",
             "--mixed_precision", "no", "--max_data_loader_n_workers", "0", "--network_train_unet_only"]
    return flags + (["--gradient_checkpointing"] if args.gradient_checkpointing else [])


def timed_run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in GB, return code) of one process, its output kept in `log`."""
    with log.open("w", encoding="utf-8") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024 / 1e9, proc.returncode


def per_step(short: float, long: float, steps_short: int, steps_long: int) -> float:
    """Seconds a step takes: what the longer run took beyond the shorter, per extra step."""
    return (long - short) / (steps_long - steps_short)


def prepare(work: Path) -> tuple[Path, Path]:
    """The dataset (kohya folder layout, captions) and the model file, made once."""
    from library.models.builtin import build_random_bundle
    from library.models.saving import save_single_file
    from library.world.bucket_dataset import make_shapes_dataset

    import torch

    data = make_shapes_dataset(work / "data", count=8)
    model = work / "sd15-random-fp16.safetensors"
    if not model.exists():
        save_single_file(build_random_bundle("sd15", 0, "sd15-random"), model, dtype=torch.float16)
    return data, model


def summarise(rows: list[dict], steps_short: int, steps_long: int) -> dict:
    """Median s/step per side over the rounds, peak RSS, and the ratio (sd-scripts over lorasmith: > 1 is faster)."""
    out = {}
    for side in ("lorasmith", "sd-scripts"):
        per = [per_step(r[side]["short_s"], r[side]["long_s"], steps_short, steps_long) for r in rows]
        out[side] = {"s_per_step": round(statistics.median(per), 4), "rounds": [round(x, 4) for x in per],
                     "peak_rss_gb": round(max(r[side]["rss_gb"] for r in rows), 3)}
    out["speedup"] = round(out["sd-scripts"]["s_per_step"] / out["lorasmith"]["s_per_step"], 3)
    out["memory_ratio"] = round(out["lorasmith"]["peak_rss_gb"] / out["sd-scripts"]["peak_rss_gb"], 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdscripts", type=Path, required=True, help="an sd-scripts checkout (its train_network.py)")
    parser.add_argument("--python", required=True, help="the interpreter of sd-scripts' own venv")
    parser.add_argument("--rounds", type=int, default=2, help="lorasmith / sd-scripts pairs of runs (default 2)")
    parser.add_argument("--short", type=int, default=2, help="optimizer steps of the short runs")
    parser.add_argument("--long", type=int, default=8, help="optimizer steps of the long runs")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL threads for both (default 1: steadier on a busy machine)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the dataset, model and logs (default: a temp folder)")
    args = parser.parse_args()
    script = args.sdscripts / "train_network.py"
    if not script.is_file():
        print(f"error: --sdscripts {args.sdscripts}: no train_network.py there; pass an sd-scripts checkout", file=sys.stderr)
        return 2
    if args.long <= args.short:
        print("error: --long must be more steps than --short", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="vs_sdscripts_"))
    work.mkdir(parents=True, exist_ok=True)
    data, model = prepare(work)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    ours_env = {**env, "PYTHONPATH": str(ROOT)}
    theirs_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    sides = {"lorasmith": ([sys.executable, str(ROOT / "train_network.py")], ROOT, ours_env),
             "sd-scripts": ([args.python, str(script)], args.sdscripts, theirs_env)}
    rows = []
    for rnd in range(args.rounds):
        row: dict = {}
        for steps, key in ((args.short, "short_s"), (args.long, "long_s")):
            for side, (cmd, cwd, side_env) in sides.items():
                out = work / f"out_{side}_{rnd}_{steps}"
                log = work / f"log_{side}_{rnd}_{steps}.txt"
                wall, rss, rc = timed_run(cmd + common_flags(model, data, out, args, steps), cwd, side_env, log)
                if rc:
                    print(json.dumps({"side": side, "round": rnd, "steps": steps, "error": f"exit {rc}, see {log}"}))
                    return 1
                entry = row.setdefault(side, {"rss_gb": 0.0})
                entry[key] = wall
                entry["rss_gb"] = max(entry["rss_gb"], rss)
                print(json.dumps({"side": side, "round": rnd, "steps": steps, "wall_s": round(wall, 2),
                                  "peak_rss_gb": round(rss, 3)}), flush=True)
        rows.append(row)
    print(json.dumps({"case": f"sd15-sized random, {args.resolution} px, batch {args.batch}, fp32, "
                      f"threads {args.threads}", **summarise(rows, args.short, args.long)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
