"""`lorasmith demo`: watch a LoRA teach a base model a shape it has never seen, on a CPU, in minutes.

A tool above the trainer: it uses the trainer, the shapes world and the grid tool,
so it lives beside them in library/, not inside library.training.

The base model is the built-in `tiny-world` (pretrained on the shapes world,
library.world), which never saw a star. The demo writes eight blue stars on
white as a DreamBooth-style `10_ohwx shape` folder, trains a LoRA on them with
the seed guide's recipe (DAdaptAdam, lr 1, cosine, per-epoch files, TensorBoard
logs, samples), then draws an epochs x LoRA-weight grid with the bundled grid
tool: the weight-0 row is the base model's idea of "ohwx shape" (world shapes,
mostly yellow), and the other rows show blue stars on white taking over as epochs
and weight grow. Some come out as blue blobs: tiny-world's VAE softens small
shapes' corners and points (README, Models).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from library.config import TrainConfig

BASE_MODEL = "tiny-world"
OUTPUT_NAME = "ohwx_star"
PROMPT = "ohwx shape"
RESOLUTION = 64
EPOCHS = 8
GRID_WEIGHTS = "0, 0.5, 1"
GRID_SEEDS = "1, 2, 3, 4"
# sd-scripts' per-line sample options: 20 Euler a steps at CFG 5 (tiny-world's sweet spot).
SAMPLE_PROMPTS = (
    f"{PROMPT} --w {RESOLUTION} --h {RESOLUTION} --d 1 --l 5 --s 20",
    f"{PROMPT} --w {RESOLUTION} --h {RESOLUTION} --d 2 --l 5 --s 20",
)


@dataclass
class DemoPaths:
    """Where the demo put everything (printed at the end, used by tests)."""

    dataset: Path
    lora_files: list[Path]
    samples: Path
    logs: Path | None
    grid: Path


def demo_config(output_dir: Path, data_dir: Path, prompts: Path | None, epochs: int = EPOCHS) -> TrainConfig:
    """The seed guide's recipe at tiny scale: DAdaptAdam, lr 1, cosine, no warm-up, rank 4, alpha 1."""
    return TrainConfig(
        pretrained_model_name_or_path=BASE_MODEL, train_data_dir=str(data_dir), output_dir=str(output_dir / "lora"),
        output_name=OUTPUT_NAME, logging_dir=str(output_dir / "logs"), caption_extension=".txt",
        resolution=str(RESOLUTION), cache_latents=True, train_batch_size=2, max_train_epochs=epochs,
        save_every_n_epochs=1, optimizer_type="DAdaptAdam",
        optimizer_args=["decouple=True", "use_bias_correction=True", "weight_decay=0.20"],
        learning_rate=1.0, unet_lr=1.0, text_encoder_lr=1.0, lr_scheduler="cosine", lr_warmup_steps=0,
        network_dim=4, network_alpha=1.0, seed=42, sample_prompts=str(prompts) if prompts else None,
        sample_every_n_epochs=1 if prompts else None, sample_sampler="euler_a",
    )


def epoch_grid(base_model: str, lora_files: list[Path], output_dir: Path, *, prompt: str = PROMPT,
               weights: str = GRID_WEIGHTS, seeds: str = GRID_SEEDS, progress: bool = True) -> Path:
    """Epochs (columns) x LoRA weight (rows) x seed (one sub-grid each) with the bundled grid tool."""
    from library.evaluation.axes import CellSettings
    from library.evaluation.grid import parse_axes, run_grid
    from library.models import load_model_bundle
    from library.sampling.pipeline import SampleRequest

    request = SampleRequest(prompt=prompt, steps=20, cfg_scale=5.0, sampler="Euler a", width=RESOLUTION,
                            height=RESOLUTION, seed=1)
    base = CellSettings(request, base_model)
    files = ", ".join(f'"{f}"' for f in lora_files)
    axes = parse_axes(base, [("LoRA", files), ("LoRA weight", weights), ("Seed", seeds)], None)
    result = run_grid(base, axes, output_dir, load_bundle=load_model_bundle, max_batch=4, margin=2,
                      progress=progress, save_cells=False)
    return result.grid_path


def run_demo(output_dir: str | Path, epochs: int = EPOCHS, progress: bool = True) -> DemoPaths:
    """Write the star dataset, train the LoRA, draw the grid; return where everything is."""
    import torch

    from library.fileio import atomic_write_text
    from library.training.console import ConsoleEvents
    from library.training.trainer import train
    from library.world.generator import write_concept_folder

    # The tiny model's ops are too small to split across threads: on a busy machine, thread
    # hand-offs cost more than the arithmetic (measured 0.3 s/step with one thread, 2-6 s with two).
    torch.set_num_threads(1)
    out = Path(output_dir).resolve()
    folder = write_concept_folder(out / "dataset", n=8, seed=0, repeats=10, token="ohwx", class_word="shape")
    prompts = out / "sample_prompts.txt"
    atomic_write_text(prompts, "\n".join(SAMPLE_PROMPTS) + "\n")
    result = train(demo_config(out, folder.parent, prompts, epochs), ConsoleEvents())
    files = [Path(f) for f in result.files]
    print(f"\nDrawing the epochs x LoRA weight grid ({len(files)} files x {GRID_WEIGHTS}; seeds {GRID_SEEDS})")
    grid = epoch_grid(BASE_MODEL, files, out / "grid", progress=progress)
    return DemoPaths(folder, files, out / "lora" / "sample", Path(result.log_dir) if result.log_dir else None, grid)


def _file_range(files: list[Path]) -> str:
    """'DIR/first.safetensors … last.safetensors (8 files)': one short line however many epochs ran."""
    if len(files) <= 1:
        return ", ".join(str(f) for f in files)
    return f"{files[0]} … {files[-1].name} ({len(files)} files)"


def print_summary(paths: DemoPaths) -> None:
    print("\nDemo finished: tiny-world never saw a star; the LoRA was trained on eight as 'ohwx shape'.")
    print(f"  dataset:      {paths.dataset}")
    print(f"  LoRA files:   {_file_range(paths.lora_files)}")
    if paths.samples.is_dir():
        print(f"  samples:      {paths.samples}")
    print(f"  grid:         {paths.grid}  (columns: epochs; rows: LoRA weight, 0 = the base model)")
    if paths.logs:
        print(f"  TensorBoard:  tensorboard --logdir \"{paths.logs.parent}\"  then open http://localhost:6006")


def _demo_handler(args: argparse.Namespace) -> int:
    print_summary(run_demo(args.output_dir, epochs=args.epochs))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    demo_p = subparsers.add_parser("demo", help="teach the built-in tiny-world model a star it never saw, then draw "
                                   "an epochs x LoRA-weight grid (a few minutes on CPU)")
    demo_p.add_argument("--output_dir", default="lorasmith_demo", help="folder for the dataset, LoRA files, logs, samples and grid")
    demo_p.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs (one LoRA file each)")
    demo_p.set_defaults(func=_demo_handler)
