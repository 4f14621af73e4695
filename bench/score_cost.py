#!/usr/bin/env python
"""What `lorasmith evaluate` (and `--evaluate_every_n_epochs`) costs per epoch file, on tiny and SD1.5-sized models.

The scorer runs only UNet forward passes: once for the base model over the whole evaluation
set, then per (file, weight) over the concept images, the class prompt, the unrelated prompts
and the regularization images, each at the fixed validation timesteps. This script counts
those passes with a forward hook (samples, not calls), counts the FLOPs of one sample's forward
with torch.utils.flop_counter, times a real `score_files` run on two files (the second file's
three weights are the per-file figure: the base pass and warm-up fall before it), and, in the same process right
after, times training steps of the same model at the same resolution, so the cost also comes
out as "one epoch file costs N training steps" — a same-run ratio that holds on other machines.

    python bench/score_cost.py --model tiny --resolution 128            # seconds
    python bench/score_cost.py --model sd15 --resolution 256 --threads 1  # SD1.5-sized on a CPU: minutes
    python bench/score_cost.py --model sd15 --resolution 512            # on a GPU (bf16 with --bf16)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def count_unet_samples(unet: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """A list that grows by each UNet call's batch size, and the hook's handle."""
    seen: list[int] = []

    def hook(_module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        seen.append(int(sample.shape[0]))

    return seen, unet.register_forward_pre_hook(hook, with_kwargs=True)


def _bundle(model: str, dtype: torch.dtype):
    from library.models import load_model_bundle
    from library.models.builtin import build_random_bundle

    if model == "sd15":
        return build_random_bundle("sd15", 0, "sd15-random", dtype)
    return load_model_bundle(model, dtype=dtype)


def _lora_files(bundle, folder: Path, rank: int) -> list[Path]:
    """Two random rank-`rank` LoRA files on sd-scripts' targets (UNet and text encoder)."""
    from library.lora.network import LoRANetwork

    files = []
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        net = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=rank, alpha=rank)
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0, 0.01)
        files.append(net.save_weights(folder / f"cost-{epoch:06d}.safetensors"))
    return files


def _train_step_seconds(model: str, resolution: int, steps: int, bf16: bool) -> float:
    """Median seconds of a UNet-LoRA training step, batch 1, cached latents, checkpointing (bench's sd15 recipe)."""
    import statistics

    from library.config import TrainConfig
    from library.models.builtin import BUILTIN_MODELS, build_random_bundle, register_builtin
    from library.training.events import Events
    from library.training.trainer import train
    from library.world.bucket_dataset import make_shapes_dataset

    if model == "sd15" and "sd15-random" not in BUILTIN_MODELS:
        register_builtin("sd15-random", lambda dtype: build_random_bundle("sd15", 0, "sd15-random", dtype),
                         configs="sd15")
    times: list[float] = []
    last = [time.perf_counter()]

    def on_step(_info: dict) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes_dataset(Path(tmp) / "data", count=4)
        cfg = TrainConfig(pretrained_model_name_or_path="sd15-random" if model == "sd15" else model,
                          train_data_dir=str(data), output_dir=str(Path(tmp) / "out"), output_name="cost",
                          caption_extension=".txt", resolution=str(resolution), train_batch_size=1,
                          max_train_steps=steps, gradient_checkpointing=True, cache_latents=True,
                          network_train_unet_only=True, optimizer_type="AdamW", learning_rate=1e-4, seed=0,
                          mixed_precision="bf16" if bf16 else "no", save_model_as="safetensors")
        events = Events()
        events.on_step = on_step  # type: ignore[method-assign]
        train(cfg, events)
    return statistics.median(times[2:] or times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="tiny, tiny-sd2, or sd15 (SD1.5-sized, random weights)")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--images", type=int, default=8, help="evaluation images (cost is linear in this)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--train_steps", type=int, default=5, help="training steps timed for the ratio (0: skip)")
    p.add_argument("--bf16", action="store_true", help="bf16 weights on CUDA")
    p.add_argument("--json_out", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from library.scoring.eval_set import eval_set_from_images
    from library.scoring.scores import DEFAULT_WEIGHTS, score_files
    from library.world.bucket_dataset import make_shapes_dataset

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if args.bf16 and cuda else torch.float32
    bundle = _bundle(args.model, dtype)
    if cuda:
        for module in bundle.components().values():
            module.to("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_shapes_dataset(Path(tmp) / "data", count=args.images)
        paths = sorted(folder.rglob("*.png"))
        captions = [q.with_suffix(".txt").read_text().strip() for q in paths]
        eval_set = eval_set_from_images(bundle, paths, captions, resolution=args.resolution, class_prompt="shape")
        files = _lora_files(bundle, Path(tmp), args.rank)
        seen, handle = count_unet_samples(bundle.unet)
        marks: list[tuple[float, int]] = [(time.perf_counter(), 0)]  # (time, samples so far) at each (file, weight)

        def progress(_done: int, _total: int, _label: str) -> None:
            if cuda:
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), sum(seen)))

        score_files(bundle, files, eval_set, progress=progress)
        handle.remove()
        from torch.utils.flop_counter import FlopCounterMode

        latent = eval_set.concept[0].latents[:1].to(next(bundle.unet.parameters()).device, dtype)
        cond = torch.zeros(1, 77, bundle.text_encoder.config.hidden_size, device=latent.device, dtype=dtype)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            bundle.unet(latent, torch.tensor([500], device=latent.device), encoder_hidden_states=cond)
    per_weight = len(DEFAULT_WEIGHTS)
    file_one, file_two = marks[per_weight], marks[2 * per_weight]  # the second file is timed: nothing is warming up
    per_file = file_two[1] - file_one[1]
    base = file_one[1] - per_file
    s_per_sample = (file_two[0] - file_one[0]) / per_file
    row = {"model": args.model, "resolution": args.resolution, "images": args.images,
           "weights": list(DEFAULT_WEIGHTS), "device": "cuda" if cuda else "cpu", "threads": torch.get_num_threads(),
           "dtype": str(dtype).removeprefix("torch."), "base_samples": base, "samples_per_file": per_file,
           "gflop_per_sample": round(counter.get_total_flops() / 1e9, 2),
           "tflop_per_file": round(per_file * counter.get_total_flops() / 1e12, 3),
           "s_per_sample": round(s_per_sample, 4), "s_per_file": round(per_file * s_per_sample, 2),
           "s_base": round(base * s_per_sample, 2)}
    del bundle
    if args.train_steps:
        step = _train_step_seconds(args.model, args.resolution, args.train_steps, args.bf16 and cuda)
        row.update({"train_s_per_step": round(step, 4), "file_in_train_steps": round(row["s_per_file"] / step, 1)})
    print(json.dumps(row), flush=True)
    if args.json_out:
        with args.json_out.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
