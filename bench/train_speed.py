#!/usr/bin/env python
"""Training speed and peak memory: s/step (median of steady-state steps) and peak RSS / CUDA memory.

Cases (one JSON line each, every case in its own process so peaks do not mix):
  tiny_adamw, tiny_dadapt  built-in tiny model, 128 px, batch 2, cached latents
  sd15                     SD1.5-sized model from the shipped configs with random weights, batch 1,
                           gradient checkpointing; 256 px fp32 on CPU, 512 px bf16 on CUDA (batch 1 and 8,
                           with samples/s and the fraction of the card's bf16 peak at 2.53 TFLOP a sample)
  --compile                the tiny cases again with --torch_compile (inductor), labelled
                           tiny_*_compiled; `first_step_s` (setup + compile + one step) shows the compile cost
On a busy shared CPU, wall time stretches with the load; `cpu_s_per_step` (process CPU
time per step) shows what an idle machine would need with that many threads.
Reference (sd-scripts on a 2-core CPU, same settings): tiny 0.34 s/step AdamW, 0.30 DAdaptAdam, 0.59 GB RSS;
sd15 6.7 s/step, 7.2 GB RSS.

    python bench/train_speed.py                 # tiny cases, torch's default threads (what a user gets)
    python bench/train_speed.py --threads 1     # one thread: slower, but less sensitive to a busy machine
    python bench/train_speed.py --case sd15     # heavy: many GB and minutes
    python bench/train_speed.py --threads 1 --compile   # adds compiled tiny cases (minutes of compiling)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REFERENCE = {"tiny_adamw": (0.34, 0.59), "tiny_dadapt": (0.30, 0.59), "sd15": (6.7, 7.2)}
TINY_CASES = ("tiny_adamw", "tiny_dadapt")
COMPILED_CASES = tuple(f"{c}_compiled" for c in TINY_CASES)
# Training FLOPs of one SD1.5 LoRA sample at 512 px (forward + backward), with gradient
# checkpointing's second forward: the figure, which this case runs with.
SD15_TFLOP_PER_SAMPLE = 2.53
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by device-name
# fragment; the first fragment found in torch.cuda.get_device_name() wins, so longer names come first.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0),
                    ("L40S", 362.1), ("L4", 121.0), ("RTX 4090", 165.2))


def bf16_peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak, or None for a card not in the table (pass --gpu_peak_tflops)."""
    return next((peak for fragment, peak in BF16_PEAK_TFLOPS if fragment in device_name), None)


def fraction_of_peak(samples_per_s: float, tflop_per_sample: float, peak_tflops: float) -> float:
    """Achieved TFLOP/s over the card's peak."""
    return samples_per_s * tflop_per_sample / peak_tflops


class StepClock:
    """Wall time between consecutive step events (data loading included)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.last: tuple[float, float] | None = None
        self.first: float | None = None

    def on_step(self, info: dict) -> None:
        now = (time.perf_counter(), time.process_time())
        if self.first is None:
            self.first = now[0]
        if self.last is not None:
            self.times.append(now[0] - self.last[0])
            self.cpu_times.append(now[1] - self.last[1])
        self.last = now


def case_config(case: str, data: Path, out: Path, cuda: bool, batch: int):
    from library.config import TrainConfig

    common = dict(train_data_dir=str(data), output_dir=str(out), output_name="bench", caption_extension=".txt",
                  cache_latents=True, seed=0, save_model_as="safetensors", torch_compile=case.endswith("_compiled"))
    if case.startswith("tiny"):
        opt = {"optimizer_type": "AdamW", "learning_rate": 1e-4} if case.startswith("tiny_adamw") else {
            "optimizer_type": "DAdaptAdam", "learning_rate": 1.0,
            "optimizer_args": ["decouple=True", "use_bias_correction=True", "weight_decay=0.20"]}
        return TrainConfig(pretrained_model_name_or_path="tiny", resolution="128", train_batch_size=2,
                           max_train_steps=40, **opt, **common)
    return TrainConfig(pretrained_model_name_or_path="sd15-random", resolution="512" if cuda else "256",
                       train_batch_size=batch, max_train_steps=14 if cuda else 12, gradient_checkpointing=True,
                       mixed_precision="bf16" if cuda else "no", network_train_unet_only=True,
                       optimizer_type="AdamW", learning_rate=1e-4, **common)


def run_case(case: str, batch: int, peak_override: float | None = None) -> dict:
    import torch

    from library.models.builtin import build_random_bundle, register_builtin
    from library.training.events import Events
    from library.training.trainer import train
    from library.world.bucket_dataset import make_shapes_dataset

    register_builtin("sd15-random", lambda dtype: build_random_bundle("sd15", 0, "sd15-random", dtype))
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_dataset(Path(tmp) / "data", count=8)
        cfg = case_config(case, data, Path(tmp) / "out", cuda, batch)
        clock = StepClock()
        events = Events()
        events.on_step = clock.on_step  # type: ignore[method-assign]
        started = time.perf_counter()
        train(cfg, events)
        total = time.perf_counter() - started
    first_step = (clock.first or started) - started
    steady = clock.times[3:] or clock.times
    s_step = statistics.median(steady)
    rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak_bytes = torch.cuda.max_memory_allocated() if cuda else rss_bytes
    peak_gb = peak_bytes / 1e9
    ref_s, ref_gb = REFERENCE[case.removesuffix("_compiled")]
    result = {
        "case": case, "device": "cuda" if cuda else "cpu", "threads": torch.get_num_threads(),
        "resolution": cfg.resolution, "batch": cfg.train_batch_size, "precision": cfg.mixed_precision,
        "s_per_step": round(s_step, 4),
        # CPU seconds the process used per step: on a shared machine this is what an idle one would take (1 thread)
        "cpu_s_per_step": round(statistics.median(clock.cpu_times[3:] or clock.cpu_times), 4),
        "steps_measured": len(steady), "total_s": round(total, 1),
        "first_step_s": round(first_step, 1), "torch_compile": cfg.torch_compile,
        "peak_memory_gb": round(peak_gb, 3), "memory_kind": "cuda_max_allocated" if cuda else "rss",
    }
    if cuda:
        samples = cfg.train_batch_size / s_step
        name = torch.cuda.get_device_name()
        result.update({"gpu": name, "samples_per_s": round(samples, 2)})
        peak = peak_override or bf16_peak_tflops(name)
        if case == "sd15":
            result.update({"tflop_per_sample": SD15_TFLOP_PER_SAMPLE, "bf16_peak_tflops": peak,
                           "fraction_of_bf16_peak": round(fraction_of_peak(samples, SD15_TFLOP_PER_SAMPLE, peak), 4)
                           if peak else None})
    else:
        result.update({"reference_s_per_step": ref_s, "speedup_vs_reference": round(ref_s / s_step, 2),
                       "reference_peak_gb": ref_gb})
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=TINY_CASES + COMPILED_CASES + ("sd15",),
                        help="default: the tiny cases")
    parser.add_argument("--compile", action="store_true", help="also run the tiny cases with --torch_compile")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: torch's choice); 1 is less sensitive to a busy machine")
    parser.add_argument("--gpu_peak_tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak in TFLOP/s, for a card the built-in table lacks")
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)  # internal: one child run
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(run_case(args.case[0], args.batch or 1, args.gpu_peak_tflops)), flush=True)
        return 0
    import torch

    for case in (args.case or list(TINY_CASES)) + (list(COMPILED_CASES) if args.compile else []):
        batches = [1, 8] if case == "sd15" and torch.cuda.is_available() else [1]
        for batch in batches:
            cmd = [sys.executable, __file__, "--child", "--case", case, "--batch", str(batch)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--gpu_peak_tflops", str(args.gpu_peak_tflops)] if args.gpu_peak_tflops else []
            proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                print(json.dumps({"case": case, "error": proc.stderr.strip().splitlines()[-1:]}), flush=True)
                continue
            print(lines[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
