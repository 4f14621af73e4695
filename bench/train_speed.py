#!/usr/bin/env python
"""Training speed, FLOPs and peak memory of lorasmith and of a reference loop, in the same run.

Cases (one JSON line per side, each side in its own process so peaks do not mix):
  tiny_adamw, tiny_dadapt  built-in tiny model, 128 px, batch 2, cached latents
  sd15                     SD1.5-sized model from the shipped configs with random weights,
                           gradient checkpointing, UNet LoRA only; 256 px fp32 batch 1 on CPU,
                           512 px bf16 batch 1 and 8 on CUDA
  sdxl                     SDXL-sized model (shipped SDXL configs, random weights): UNet LoRA only with
                           gradient checkpointing, cached latents and cached text-encoder outputs (the
                           24 GB recipe); 1024 px bf16 batch 1 and 4 on CUDA, 256 px fp32 batch 1 on CPU
                           (tens of GB of RAM and minutes per step: use --dry on a shared machine)
  --compile                the tiny cases again with --torch_compile (inductor), labelled
                           tiny_*_compiled; `first_step_s` (setup + compile + one step) shows the compile cost
For tiny_adamw, sd15 and sdxl a reference loop (bench/reference_loop.py: plain diffusers + PEFT, the way
diffusers' train_text_to_image_lora.py (and _sdxl.py) trains, same model, resolution, batch, precision,
checkpointing and LoRA targets) runs right after, in the same run, and the lorasmith line gets
the ratios: `speedup_vs_reference` (samples/s over the reference's) and `memory_vs_reference`
(peak over the reference's peak). The reference runs twice: as the script is written (VAE and
text encoder every step) and with cached latents/text-encoder outputs, as lorasmith runs
(`*_cached`). FLOPs are counted with torch.utils.flop_counter.FlopCounterMode on one step of each
side (executed FLOPs: checkpointing's recompute included); on a GPU `fraction_of_bf16_peak` is the
achieved FLOP/s over the card's dense bf16 peak from the vendors' data sheets (table below).
On CUDA the sd15 and sdxl lines also carry the VRAM estimate of `--print_plan` for the same config and
their ratio to the measured `torch.cuda.max_memory_allocated` peak.
On a busy shared CPU, wall time stretches with the load; `cpu_s_per_step` (process CPU time
per step) shows what an idle machine would need with that many threads.

    python bench/train_speed.py                 # tiny cases + reference, torch's default threads
    python bench/train_speed.py --threads 1     # one thread: slower, but less sensitive to a busy machine
    python bench/train_speed.py --case sd15     # heavy on a CPU: many GB and minutes
    python bench/train_speed.py --case sd15 --dry   # the sd15 code path on the tiny model at 64 px, seconds
    python bench/train_speed.py --case sdxl --dry   # the sdxl code path on tiny-sdxl at 64 px, seconds
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

TINY_CASES = ("tiny_adamw", "tiny_dadapt")
COMPILED_CASES = tuple(f"{c}_compiled" for c in TINY_CASES)
REFERENCE_CASES = ("tiny_adamw", "sd15", "sdxl")
WARMUP_STEPS = 3  # steps before the counted one and the timed ones (allocator, cuDNN autotuning, compiling)
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, by device-name
# fragment; the first fragment found in torch.cuda.get_device_name() wins, so longer names come first.
# H200 SXM: 989 TFLOP/s dense bf16 by NVIDIA's data sheet (the H100 SXM's tensor cores).
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0),
                    ("L40S", 362.1), ("L4", 121.0), ("RTX 4090", 165.2))


def bf16_peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak, or None for a card not in the table (pass --gpu_peak_tflops)."""
    return next((peak for fragment, peak in BF16_PEAK_TFLOPS if fragment in device_name), None)


def fraction_of_peak(samples_per_s: float, tflop_per_sample: float, peak_tflops: float) -> float:
    """Achieved TFLOP/s over the card's peak."""
    return samples_per_s * tflop_per_sample / peak_tflops


def ratios(ours: dict, ref: dict) -> dict:
    """Same-run ratios: samples/s over the reference's (> 1 is faster), peak memory over its peak (< 1 is leaner)."""
    return {"speedup_vs_reference": round(ours["samples_per_s"] / ref["samples_per_s"], 3),
            "memory_vs_reference": round(ours["peak_memory_gb"] / ref["peak_memory_gb"], 3)}


class StepClock:
    """Wall time between consecutive step events; counts FLOPs over one step and times a span of steps.

    Step `count_at` (1-based) runs under FlopCounterMode and is left out of the step times; on CUDA
    the device is synchronised only at the two ends of the timed span, so the loop runs as usual.
    """

    def __init__(self, count_at: int | None = None, cuda: bool = False, last: int | None = None) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.last: tuple[float, float] | None = None
        self.first: float | None = None
        self.steps = 0
        self.count_at = count_at
        self.cuda = cuda
        self.counter = None
        self.flops: int | None = None
        self.span: tuple[float, int] | None = None  # (start time, step) of the timed span
        self.last_step = last  # the run's final step: the span ends there (before saving and teardown)
        self.span_end: float | None = None

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def on_step(self, info: dict) -> None:
        self.steps += 1
        if self.counter is not None:  # the counted step just ended
            self._sync()
            self.counter.__exit__(None, None, None)
            self.flops, self.counter = self.counter.get_total_flops(), None
            self.span = (time.perf_counter(), self.steps)
            self.last = None
        now = (time.perf_counter(), time.process_time())
        if self.first is None:
            self.first = now[0]
        if self.last is not None:
            self.times.append(now[0] - self.last[0])
            self.cpu_times.append(now[1] - self.last[1])
        self.last = now
        if self.steps == self.last_step:
            self._sync()
            self.span_end = time.perf_counter()
        if self.count_at is not None and self.steps == self.count_at - 1:
            from reference_loop import flop_counter

            self._sync()
            self.counter = flop_counter()
            self.counter.__enter__()

    def span_rate(self) -> float | None:
        """Steps per second over the span after the counted step (device synchronised at its end)."""
        if self.span is None or self.steps <= self.span[1]:
            return None
        if self.span_end is None:
            self._sync()
        end = self.span_end or time.perf_counter()
        return (self.steps - self.span[1]) / (end - self.span[0])


def case_config(case: str, data: Path, out: Path, cuda: bool, batch: int, dry: bool = False):
    """The lorasmith side's TrainConfig; `dry` runs the sd15 path on the tiny model at 64 px in a few steps."""
    from library.config import TrainConfig

    common = dict(train_data_dir=str(data), output_dir=str(out), output_name="bench", caption_extension=".txt",
                  cache_latents=True, seed=0, save_model_as="safetensors", torch_compile=case.endswith("_compiled"))
    if case.startswith("tiny"):
        opt = {"optimizer_type": "AdamW", "learning_rate": 1e-4} if case.startswith("tiny_adamw") else {
            "optimizer_type": "DAdaptAdam", "learning_rate": 1.0,
            "optimizer_args": ["decouple=True", "use_bias_correction=True", "weight_decay=0.20"]}
        return TrainConfig(pretrained_model_name_or_path="tiny", resolution="64" if dry else "128",
                           train_batch_size=2, max_train_steps=8 if dry else 40, **opt, **common)
    steps = 7 if dry else (WARMUP_STEPS + 1 + 11 if cuda else 12)
    if case == "sdxl":
        steps = 7 if dry else (WARMUP_STEPS + 1 + 11 if cuda else WARMUP_STEPS + 3)
        return TrainConfig(pretrained_model_name_or_path="tiny-sdxl" if dry else "sdxl-random",
                           resolution="64" if dry else ("1024" if cuda else "256"),
                           train_batch_size=batch, max_train_steps=steps, gradient_checkpointing=True,
                           mixed_precision="bf16" if cuda else "no", network_train_unet_only=True,
                           cache_text_encoder_outputs=True, no_half_vae=True,
                           optimizer_type="AdamW", learning_rate=1e-4, **common)
    return TrainConfig(pretrained_model_name_or_path="tiny" if dry else "sd15-random",
                       resolution="64" if dry else ("512" if cuda else "256"),
                       train_batch_size=batch, max_train_steps=steps, gradient_checkpointing=True,
                       mixed_precision="bf16" if cuda else "no", network_train_unet_only=True,
                       optimizer_type="AdamW", learning_rate=1e-4, **common)


def _peak_memory(cuda: bool) -> tuple[float, str]:
    import torch

    if cuda:
        return torch.cuda.max_memory_allocated() / 1e9, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, "rss"


def _gpu_fields(samples: float, flops_per_step: int | None, batch: int, peak_override: float | None) -> dict:
    """Card, samples/s and the fraction of its dense bf16 peak the counted FLOPs reach."""
    import torch

    name = torch.cuda.get_device_name()
    peak = peak_override or bf16_peak_tflops(name)
    tflop = flops_per_step / batch / 1e12 if flops_per_step else None
    fraction = round(fraction_of_peak(samples, tflop, peak), 4) if peak and tflop else None
    return {"gpu": name, "bf16_peak_tflops": peak, "peak_source": "datasheet" if not peak_override else "--gpu_peak_tflops",
            "fraction_of_bf16_peak": fraction}


def _register_random_models() -> None:
    """The SD1.5- and SDXL-sized built-ins with random weights (each child process registers them once)."""
    from library.models.builtin import BUILTIN_MODELS, build_random_bundle, register_builtin

    if "sd15-random" not in BUILTIN_MODELS:
        register_builtin("sd15-random", lambda dtype: build_random_bundle("sd15", 0, "sd15-random", dtype), configs="sd15")
        register_builtin("sdxl-random", lambda dtype: build_random_bundle("sdxl", 0, "sdxl-random", dtype,
                                                                          architecture="sdxl"), configs="sdxl")


def run_case(case: str, batch: int, peak_override: float | None = None, dry: bool = False) -> dict:
    """The lorasmith side: a whole training run through `train`, timed from its step events."""
    import torch

    from library.training.events import Events
    from library.training.trainer import train
    from library.world.bucket_dataset import make_shapes_dataset

    _register_random_models()
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_dataset(Path(tmp) / "data", count=8)
        cfg = case_config(case, data, Path(tmp) / "out", cuda, batch, dry)
        estimate = _vram_estimate(cfg) if case in ("sd15", "sdxl") else None
        clock = StepClock(count_at=WARMUP_STEPS + 1, cuda=cuda, last=cfg.max_train_steps)
        events = Events()
        events.on_step = clock.on_step  # type: ignore[method-assign]
        started = time.perf_counter()
        train(cfg, events)
        total = time.perf_counter() - started
    first_step = (clock.first or started) - started
    steady = clock.times[WARMUP_STEPS - 1:] or clock.times
    s_step = statistics.median(steady)
    rate = clock.span_rate() if cuda else None
    peak_gb, kind = _peak_memory(cuda)
    samples = cfg.train_batch_size * (rate or 1 / s_step)
    result = {
        "side": "lorasmith", "case": case, "device": "cuda" if cuda else "cpu", "threads": torch.get_num_threads(),
        "model": cfg.pretrained_model_name_or_path, "resolution": cfg.resolution, "batch": cfg.train_batch_size,
        "precision": cfg.mixed_precision, "gradient_checkpointing": cfg.gradient_checkpointing,
        "s_per_step": round(s_step, 4), "samples_per_s": round(samples, 3),
        # CPU seconds the process used per step: on a shared machine this is what an idle one would take (1 thread)
        "cpu_s_per_step": round(statistics.median(clock.cpu_times[WARMUP_STEPS - 1:] or clock.cpu_times), 4),
        "steps_measured": len(steady), "total_s": round(total, 1),
        "first_step_s": round(first_step, 1), "torch_compile": cfg.torch_compile,
        "tflop_per_sample": round(clock.flops / cfg.train_batch_size / 1e12, 4) if clock.flops else None,
        "peak_memory_gb": round(peak_gb, 3), "memory_kind": kind,
    }
    if cuda:
        result.update(_gpu_fields(samples, clock.flops, cfg.train_batch_size, peak_override))
    if estimate is not None:
        result.update({"vram_estimate_gb": round(estimate / 1e9, 3),
                       "estimate_over_measured": round(estimate / 1e9 / peak_gb, 3) if cuda else None})
    return result


def _vram_estimate(cfg) -> int:
    """The --print_plan estimate for this config (before any weights load)."""
    from library.training.vram_estimate import estimate_vram

    return estimate_vram(cfg).total


def run_reference(case: str, batch: int, peak_override: float | None = None, dry: bool = False) -> list[dict]:
    """The reference side: the diffusers-script loop as written, then with cached latents/text-encoder outputs."""
    import torch

    import reference_loop as ref

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    cfg = case_config(case, Path("."), Path("."), cuda, batch, dry)
    res = int(cfg.resolution.split(",")[0])
    from library.models.builtin import BUILTIN_CONFIGS

    _register_random_models()
    family = BUILTIN_CONFIGS[cfg.pretrained_model_name_or_path]
    rc = ref.ReferenceCase(family=family, resolution=res,
                           batch=cfg.train_batch_size, precision=cfg.mixed_precision,
                           gradient_checkpointing=cfg.gradient_checkpointing, rank=cfg.network_dim,
                           alpha=cfg.network_alpha or 1.0, train_text_encoder=not cfg.network_train_unet_only,
                           warmup=1 if dry else WARMUP_STEPS, timed=2 if dry else (10 if cuda else 12))
    out = []
    for variant, models in ref.run_both(rc, device):
        peak_gb, kind = _peak_memory(cuda)
        samples = rc.batch * variant["steps"] / variant["span_s"]
        row = {"side": f"reference{'_cached' if variant['cached'] else ''}", "case": case,
               "device": device.type, "threads": torch.get_num_threads(), "resolution": cfg.resolution,
               "batch": rc.batch, "precision": rc.precision, "gradient_checkpointing": rc.gradient_checkpointing,
               "s_per_step": round(statistics.median(variant["step_times"]), 4), "samples_per_s": round(samples, 3),
               "tflop_per_sample": round(variant["flops_per_step"] / rc.batch / 1e12, 4),
               "peak_memory_gb": round(peak_gb, 3), "memory_kind": kind}
        if cuda:
            row.update(_gpu_fields(samples, variant["flops_per_step"], rc.batch, peak_override))
            torch.cuda.reset_peak_memory_stats()
        out.append(row)
    return out


def _child(args: argparse.Namespace, side: str, case: str, batch: int) -> list[dict]:
    cmd = [sys.executable, __file__, "--child", side, "--case", case, "--batch", str(batch)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--gpu_peak_tflops", str(args.gpu_peak_tflops)] if args.gpu_peak_tflops else []
    cmd += ["--dry"] if args.dry else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not rows:
        return [{"side": side, "case": case, "batch": batch, "error": proc.stderr.strip().splitlines()[-3:]}]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", action="append", choices=TINY_CASES + COMPILED_CASES + ("sd15", "sdxl"),
                        help="default: the tiny cases")
    parser.add_argument("--compile", action="store_true", help="also run the tiny cases with --torch_compile")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: torch's choice); 1 is less sensitive to a busy machine")
    parser.add_argument("--gpu_peak_tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak in TFLOP/s, for a card the built-in table lacks")
    parser.add_argument("--no_reference", action="store_true", help="skip the reference loop")
    parser.add_argument("--dry", action="store_true",
                        help="check the code paths in seconds: tiny model, 64 px, a few steps (numbers mean nothing)")
    parser.add_argument("--json_out", type=Path, default=None, help="also append every JSON line to this file")
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)  # internal: one child run
    parser.add_argument("--child", choices=("lorasmith", "reference"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        run = run_case if args.child == "lorasmith" else run_reference
        rows = run(args.case[0], args.batch or 1, args.gpu_peak_tflops, args.dry)
        for row in rows if isinstance(rows, list) else [rows]:
            print(json.dumps(row), flush=True)
        return 0
    import torch

    for case in (args.case or list(TINY_CASES)) + (list(COMPILED_CASES) if args.compile else []):
        batches = {"sd15": [1, 8], "sdxl": [1, 4]}.get(case, [1]) if torch.cuda.is_available() else [1]
        batches = [1, 2] if case in ("sd15", "sdxl") and args.dry else batches
        for batch in batches:
            ours = _child(args, "lorasmith", case, batch)
            refs = [] if args.no_reference or case not in REFERENCE_CASES else _child(args, "reference", case, batch)
            for ref in refs:
                if "error" not in ref and "error" not in ours[0]:
                    suffix = "_cached" if ref["side"].endswith("_cached") else ""
                    ours[0].update({k + suffix: v for k, v in ratios(ours[0], ref).items()})
            for row in ours + refs:
                line = json.dumps(row)
                print(line, flush=True)
                if args.json_out:
                    with args.json_out.open("a", encoding="utf-8") as fh:
                        fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
