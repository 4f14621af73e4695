"""The benchmark scripts' own arithmetic: fraction of the card's bf16 peak, same-run ratios, FLOP counting, tables."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str):
    sys.path.insert(0, str(BENCH)) if str(BENCH) not in sys.path else None
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
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
    assert bench.fraction_of_peak(20.0, 2.53, 989.4) == pytest.approx(0.05114, abs=1e-5)


def test_same_run_ratios():
    bench = _load("train_speed")
    ours = {"samples_per_s": 30.0, "peak_memory_gb": 6.0}
    ref = {"samples_per_s": 20.0, "peak_memory_gb": 8.0}
    assert bench.ratios(ours, ref) == {"speedup_vs_reference": 1.5, "memory_vs_reference": 0.75}


def test_flop_counter_counts_the_direct_cpu_convolution_like_torch_counts_a_convolution():
    counter_factory = _load("reference_loop").flop_counter
    x, w = torch.randn(2, 8, 6, 6, requires_grad=True), torch.randn(16, 8, 3, 3, requires_grad=True)
    with counter_factory() as plain:
        torch.nn.functional.conv2d(x, w, padding=1).sum().backward()
    with counter_factory() as direct:
        torch._C._nn.thnn_conv2d(x, w, (3, 3), None, (1, 1), (1, 1)).sum().backward()
    forward = 2 * (2 * 16 * 6 * 6) * (8 * 3 * 3)
    assert plain.get_total_flops() == direct.get_total_flops() == 3 * forward


def test_step_clock_counts_one_step_and_times_the_span_after_it():
    clock = _load("train_speed").StepClock(count_at=2, last=4)
    clock.on_step({})  # step 1 ends: counting starts for step 2
    torch.randn(4, 5) @ torch.randn(5, 3)  # 2*4*5*3 = 120 FLOPs inside the counted step
    clock.on_step({})  # step 2 ends: counted, the span starts
    clock.on_step({})
    clock.on_step({})  # the last step: the span ends here, whatever comes after
    assert clock.flops == 120
    assert clock.span[1] == 2 and clock.span_end is not None
    assert clock.span_rate() == pytest.approx(2 / (clock.span_end - clock.span[0]))
    assert len(clock.times) == 2  # the counted step is not among the step times


def test_vs_sdscripts_per_step_cancels_setup_and_ratio_is_theirs_over_ours():
    vs = _load("vs_sdscripts")
    assert vs.per_step(30.0, 42.0, 2, 8) == 2.0
    rows = [{"lorasmith": {"short_s": 20.0, "long_s": 26.0, "rss_gb": 5.0},
             "sd-scripts": {"short_s": 40.0, "long_s": 52.0, "rss_gb": 7.0}}]
    summary = vs.summarise(rows, 2, 8)
    assert summary["lorasmith"]["s_per_step"] == 1.0 and summary["sd-scripts"]["s_per_step"] == 2.0
    assert summary["speedup"] == 2.0 and summary["memory_ratio"] == pytest.approx(0.714, abs=1e-3)


def test_gpu_table_prints_one_line_per_row_and_errors():
    table = _load("gpu_table").table([
        {"side": "lorasmith", "case": "sd15", "resolution": "512", "batch": 8, "samples_per_s": 40.1,
         "gpu": "NVIDIA H200", "bf16_peak_tflops": 989.4, "speedup_vs_reference": 1.6, "estimate_over_measured": 1.04},
        {"side": "reference", "case": "sd15", "batch": 8, "error": ["Traceback", "RuntimeError: boom"]},
        {"side": "lorasmith", "case": "sdxl", "resolution": "1024", "batch": 4, "samples_per_s": 3.2}])
    lines = table.splitlines()
    assert "NVIDIA H200" in lines[0] and "989.4" in lines[0]
    assert lines[2].split()[:2] == ["sd15", "512"] and lines[4].split()[:2] == ["sdxl", "1024"]
    assert "40.1" in lines[2] and "1.6" in lines[2] and "1.04" in lines[2]
    assert "ERROR" in lines[3] and "boom" in lines[3]


def test_the_sdxl_reference_step_conditions_the_unet_as_the_diffusers_sdxl_script_does():
    """Both encoders' penultimate states side by side, te2's pooled projection, six size ids; the VAE in fp32."""
    ref = _load("reference_loop")
    case = ref.ReferenceCase(family="tiny-sdxl", resolution=64, batch=2, precision="bf16", gradient_checkpointing=True,
                             warmup=0, timed=1)
    m = ref.build(case, torch.device("cpu"))
    assert next(m["vae"].parameters()).dtype == torch.float32 and next(m["unet"].parameters()).dtype == torch.bfloat16
    latents, (hidden, added) = ref.encode(m, False)
    width1, width2 = m["te"].config.hidden_size, m["te2"].config.hidden_size
    assert hidden.shape == (2, 77, width1 + width2)
    manual = m["te2"](m["ids"], output_hidden_states=True)
    assert torch.equal(hidden[..., width1:], manual.hidden_states[-2])
    assert torch.equal(added["text_embeds"], manual.text_embeds)
    assert added["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2
    assert latents.dtype == torch.bfloat16 and latents.shape[-1] == 64 // 2 ** (len(m["vae"].config.block_out_channels) - 1)
    loss = ref.step(m, torch.device("cpu"), (latents, (hidden, added)))
    assert loss > 0 and all(p.grad is None for p in m["params"])  # stepped and zeroed


def test_score_cost_counts_the_scorers_unet_samples_as_the_readme_states():
    """Base pass: images x 4 timesteps x (concept + class + unrelated prompts); each file: that, per weight."""
    from library.models import load_model_bundle
    from library.scoring.scores import EvalBatch, EvalSet, score_files

    bench = _load("score_cost")
    bundle = load_model_bundle("tiny")
    torch.manual_seed(0)
    eval_set = EvalSet([EvalBatch(torch.randn(3, 4, 8, 8), ["ohwx shape"] * 3)], class_prompt="shape",
                       prior_prompts=("a city", "a bowl"))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        files = bench._lora_files(bundle, Path(tmp), rank=2)
        seen, handle = bench.count_unet_samples(bundle.unet)
        score_files(bundle, files[:1], eval_set, weights=(0.5, 1.0))
        handle.remove()
    per_pass = 3 * 4 * (1 + 1 + 2)
    assert sum(seen) == per_pass * (1 + 2)
