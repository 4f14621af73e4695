#!/usr/bin/env python
"""Convolution forward + input gradient: oneDNN vs the direct (im2col + GEMM) kernel, 1 and 2 threads.

The evidence behind `library/training/conv_path.py`'s size threshold. One JSON line per shape:
milliseconds (median) for each path and thread count, the call's multiply-adds, and which
path the trainer takes for it. Shapes: the tiny model's convolutions at 128 px, batch 2,
and SD1.5's at 256 px, batch 1 (frozen weights, so only the input gradient, as in training).

    python bench/conv_paths.py
    python bench/conv_paths.py --tiny-only
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from library.training.conv_path import conv_macs, takes_direct_path  # noqa: E402

# (batch, in channels, height, width, out channels, kernel, stride)
TINY = [(2, 4, 16, 16, 32, 3, 1), (2, 32, 16, 16, 32, 3, 1), (2, 64, 16, 16, 32, 3, 1), (2, 32, 16, 16, 32, 3, 2),
        (2, 32, 8, 8, 32, 3, 1), (2, 64, 8, 8, 32, 3, 1), (2, 64, 4, 4, 64, 3, 1), (2, 128, 4, 4, 64, 3, 1),
        (2, 64, 2, 2, 64, 3, 1), (2, 32, 16, 16, 32, 1, 1), (2, 64, 4, 4, 64, 1, 1)]
SD15 = [(1, 320, 32, 32, 320, 3, 1), (1, 640, 32, 32, 320, 3, 1), (1, 640, 16, 16, 640, 3, 1),
        (1, 1280, 16, 16, 640, 3, 1), (1, 1280, 16, 16, 1280, 3, 2), (1, 640, 8, 8, 1280, 3, 1),
        (1, 1280, 8, 8, 1280, 3, 1), (1, 2560, 8, 8, 1280, 3, 1), (1, 1280, 8, 8, 1280, 3, 2),
        (1, 1280, 4, 4, 1280, 3, 1), (1, 2560, 4, 4, 1280, 3, 1), (1, 320, 32, 32, 320, 1, 1)]


def time_conv(shape: tuple[int, ...], onednn: bool, threads: int) -> float:
    """Median ms of forward + input gradient."""
    torch.set_num_threads(threads)
    n, ci, h, w, co, k, s = shape
    x = torch.randn(n, ci, h, w, requires_grad=True)
    weight, bias = torch.randn(co, ci, k, k), torch.randn(co)
    reps = 30 if ci * co < 100_000 else 4
    times = []
    with torch.backends.mkldnn.flags(enabled=onednn):
        for _ in range(reps + 2):
            started = time.perf_counter()
            y = F.conv2d(x, weight, bias, s, k // 2)
            y.backward(torch.ones_like(y))
            times.append(time.perf_counter() - started)
    return statistics.median(times[2:]) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-only", action="store_true", help="skip the SD1.5 shapes (seconds instead of a minute)")
    args = parser.parse_args()
    for shape in TINY + ([] if args.tiny_only else SD15):
        n, ci, h, w, co, k, s = shape
        x, conv = torch.empty(n, ci, h, w), torch.nn.Conv2d(ci, co, k, s, k // 2, device="meta")
        macs = conv_macs(x, conv.weight, (s, s))
        row: dict = {"shape": {"batch": n, "in": ci, "hw": [h, w], "out": co, "kernel": k, "stride": s}, "macs": macs,
                     "trainer_path": "direct" if takes_direct_path(conv, x, conv.weight) else "onednn"}
        for threads in (1, 2):
            for onednn in (True, False):
                row[f"{'onednn' if onednn else 'direct'}_{threads}t_ms"] = round(time_conv(shape, onednn, threads), 3)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
