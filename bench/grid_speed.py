"""Grid throughput: `run_grid` against a naive loop that rebuilds the pipeline for every cell.

The grid is LoRA files (3 "epochs") × LoRA weights × seeds on a base model (default: the
built-in tiny model). The naive loop loads the base model, loads the cell's LoRA and
generates one image per cell — what a script calling a txt2img pipeline per cell does.
Both runs make the same images; prints one JSON object with images/s and the ratio
(target: grid at least 2× the naive loop).

    python bench/grid_speed.py [--model tiny] [--steps 4] [--size 64] [--seeds 2] [--threads 1]
    python bench/grid_speed.py --compare_conv_path   # also: the grid with PyTorch's own CPU convolutions

Sampling on the CPU routes small convolutions to the direct kernel as training does
(library/training/conv_path.py); --compare_conv_path runs the grid a second time with
every Conv2d pinned to PyTorch's default path and reports the ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library.evaluation.axes import CellSettings
from library.evaluation.grid import parse_axes, run_grid
from library.lora import LoRANetwork
from library.models import load_model_bundle
from library.sampling.pipeline import SampleRequest, generate


def make_epoch_loras(model: str, folder: Path, epochs: int = 3, rank: int = 4) -> list[Path]:
    """Random non-zero LoRAs saved as name-000001 … name (final), like a training run's saves."""
    bundle = load_model_bundle(model)
    gen = torch.Generator().manual_seed(0)
    paths = []
    for e in range(1, epochs + 1):
        net = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=rank, alpha=rank)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        name = f"bench-{e:06d}.safetensors" if e < epochs else "bench.safetensors"
        paths.append(net.save_weights(folder / name))
    return paths


def naive(model: str, cells: list[tuple[str, float, int]], base: SampleRequest) -> list:
    """Per cell: load the model again, apply that cell's LoRA, generate one image."""
    images = []
    for lora, weight, seed in cells:
        bundle = load_model_bundle(model)
        request = SampleRequest(**{**base.__dict__, "seed": seed, "loras": ((lora, weight),)})
        images += generate(bundle, request)
    return images


def default_conv_bundle(model: str):
    """The model with every Conv2d pinned to PyTorch's own forward, so the sampler's small-conv path is off."""
    import functools

    bundle = load_model_bundle(model)
    for module in bundle.unet.modules():
        if type(module) is torch.nn.Conv2d:
            module._conv_forward = functools.partial(torch.nn.Conv2d._conv_forward, module)
    return bundle


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grid_batch_size", type=int, default=4)
    p.add_argument("--compare_conv_path", action="store_true",
                   help="also time the grid with the small-convolution path off (PyTorch's default kernels)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        loras = [str(x) for x in make_epoch_loras(args.model, folder)]
        weights = [0.5, 1.0]
        seeds = list(range(1, args.seeds + 1))
        base = SampleRequest(prompt="a photo of a red cube", negative_prompt="blurry", steps=args.steps,
                             width=args.size, height=args.size, seed=1)
        cell_list = [(lo, w, s) for lo in loras for w in weights for s in seeds]

        t0 = time.perf_counter()
        naive(args.model, cell_list, base)
        naive_s = time.perf_counter() - t0

        settings = CellSettings(base, args.model)
        axes = parse_axes(settings, [("Seed", ",".join(map(str, seeds))), ("LoRA weight", "0.5, 1"),
                                     ("LoRA", ",".join(loras))], None)
        t0 = time.perf_counter()
        run_grid(settings, axes, folder / "grid", load_bundle=load_model_bundle, max_batch=args.grid_batch_size,
                 progress=False, save_cells=True)
        grid_s = time.perf_counter() - t0
        no_conv_s = None
        if args.compare_conv_path:
            t0 = time.perf_counter()
            run_grid(settings, axes, folder / "grid-default-conv", load_bundle=default_conv_bundle,
                     max_batch=args.grid_batch_size, progress=False, save_cells=True)
            no_conv_s = time.perf_counter() - t0
    n = len(cell_list)
    result = {
        "model": args.model, "cells": n, "steps": args.steps, "size": args.size, "threads": args.threads,
        "device": "cpu", "naive_seconds": round(naive_s, 3), "grid_seconds": round(grid_s, 3),
        "naive_images_per_s": round(n / naive_s, 3), "grid_images_per_s": round(n / grid_s, 3),
        "speedup": round(naive_s / grid_s, 2), "target_speedup": 2.0,
    }
    if no_conv_s is not None:
        result.update(grid_seconds_default_conv=round(no_conv_s, 3),
                      conv_path_speedup=round(no_conv_s / grid_s, 2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
