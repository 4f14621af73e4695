"""The benchmark scripts' own arithmetic: the GPU report's fraction of the card's bf16 peak."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("device,peak", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.4),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.1), ("NVIDIA L4", 121.0),
    ("NVIDIA GeForce RTX 4090", 165.2), ("NVIDIA GeForce GTX 1080", None),
])
def test_bf16_peak_by_device_name(device, peak):
    assert _load("train_speed").bf16_peak_tflops(device) == peak


def test_fraction_of_peak_is_achieved_tflops_over_peak():
    bench = _load("train_speed")
    # 20 samples/s x 2.53 TFLOP = 50.6 TFLOP/s on a 989.4 TFLOP/s card
    assert bench.fraction_of_peak(20.0, bench.SD15_TFLOP_PER_SAMPLE, 989.4) == pytest.approx(0.05114, abs=1e-5)
