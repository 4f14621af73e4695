#!/usr/bin/env python
"""Where a training step's time goes on a GPU: GPU-busy fraction and the top kernels and host ops.

The first SD1.5 measurement on an H200 (512 px bf16, batch 8: 0.33 s/step, 6% of the bf16 peak)
could not say whether the step waits on the GPU or on Python. This bench answers that: it trains
the SD1.5-sized random model through `library.training.train` under torch.profiler, and prints

- wall time per profiled step and the summed GPU kernel time in those steps (busy fraction:
  near 1 means GPU-bound, well under 1 means the host cannot launch work fast enough);
- the kernels that take the most GPU time, and the host ops that take the most CPU time.

    python bench/profile_step.py --batch 8            # on a GPU; prints a table, writes --trace if given
    python bench/profile_step.py --tiny --steps 6     # CPU dry run on the tiny model (checks the script)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class ProfiledSteps:
    """Steps the profiler's schedule at each training step and times the profiled ones."""

    def __init__(self, profiler, wait: int, active: int) -> None:
        self.profiler = profiler
        self.wait, self.active = wait, active
        self.count = 0
        self.window: list[float] = []

    def on_step(self, info: dict) -> None:
        self.count += 1
        if self.wait <= self.count <= self.wait + self.active:
            self.window.append(time.perf_counter())
        self.profiler.step()


def busy_fraction(kernel_us: float, wall_s: float) -> float:
    """Summed kernel time over wall time (kernels on several streams can overlap: an upper bound)."""
    return kernel_us / 1e6 / wall_s if wall_s > 0 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--resolution", default="512")
    parser.add_argument("--steps", type=int, default=14, help="training steps in all (warm-up included)")
    parser.add_argument("--tiny", action="store_true", help="the built-in tiny model (a dry run of the script)")
    parser.add_argument("--trace", default=None, help="write a Chrome trace of the profiled steps here")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from library.config import TrainConfig
    from library.models.builtin import build_random_bundle, register_builtin
    from library.training.events import Events
    from library.training.trainer import train
    from library.world.bucket_dataset import make_shapes_dataset

    cuda = torch.cuda.is_available()
    register_builtin("sd15-random", lambda dtype: build_random_bundle("sd15", 0, "sd15-random", dtype), configs="sd15")
    wait, warmup = 4, 2
    active = min(6, args.steps - wait - warmup)
    if active < 2:
        parser.error(f"--steps must be at least {wait + warmup + 2} (warm-up steps come first)")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_dataset(Path(tmp) / "data", count=max(8, args.batch))
        cfg = TrainConfig(
            pretrained_model_name_or_path="tiny" if args.tiny else "sd15-random",
            resolution="128" if args.tiny else args.resolution, train_batch_size=args.batch,
            max_train_steps=args.steps, gradient_checkpointing=not args.tiny,
            mixed_precision="bf16" if cuda else "no", network_train_unet_only=True, optimizer_type="AdamW",
            learning_rate=1e-4, train_data_dir=str(data), output_dir=str(Path(tmp) / "out"),
            output_name="profile", caption_extension=".txt", cache_latents=True, seed=0)
        with profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=active)) as prof:
            steps = ProfiledSteps(prof, wait + warmup, active)
            events = Events()
            events.on_step = steps.on_step  # type: ignore[method-assign]
            train(cfg, events)
    averages = prof.key_averages()
    window = steps.window
    wall = (window[-1] - window[0]) if len(window) > 1 else 0.0
    measured = max(len(window) - 1, 1)
    print(f"device {'cuda ' + torch.cuda.get_device_name() if cuda else 'cpu'}, torch {torch.__version__}, "
          f"batch {args.batch}, {cfg.resolution} px, {measured} profiled steps, {wall / measured:.4f} s/step wall")
    if cuda:
        kernel_us = sum(e.self_device_time_total for e in averages if str(e.device_type).endswith("CUDA"))
        print(f"GPU kernel time {kernel_us / 1e3 / measured:.1f} ms/step; busy fraction "
              f"{busy_fraction(kernel_us, wall):.2f} (near 1: GPU-bound; well under 1: host-bound)")
        print(averages.table(sort_by="self_device_time_total", row_limit=18, max_name_column_width=60))
    print(averages.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
    if args.trace:
        prof.export_chrome_trace(args.trace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
