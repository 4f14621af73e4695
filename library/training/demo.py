"""`lorasmith demo`: a complete small training run anyone can start right after installing.

It writes a deterministic dataset of coloured shapes with captions into
`<output_dir>/dataset/10_ohwx shape/`, trains the built-in tiny model for 3
epochs with DAdaptAdam (the seed guide's recipe), saving a LoRA per epoch,
TensorBoard logs and samples, and ends by saying where everything is.
`make_shapes_dataset` is separate so another dataset (or model) can be swapped in.
"""
from __future__ import annotations

import random
from pathlib import Path

from library.config import TrainConfig

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40),
           "purple": (140, 60, 170), "orange": (240, 140, 40)}
FOLDER = "10_ohwx shape"
SAMPLE_PROMPTS = (
    "ohwx shape, circle, red, simple background --n blurry --w 128 --h 128 --d 1 --l 7 --s 20",
    "ohwx shape, triangle, blue, simple background --w 128 --h 128 --d 2 --l 7 --s 20",
)


def _draw(shape: str, colour: tuple[int, int, int], size: tuple[int, int], rng: random.Random):
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, (235, 235, 230))
    draw = ImageDraw.Draw(img)
    side = int(min(w, h) * rng.uniform(0.55, 0.8))
    cx, cy = w // 2 + rng.randint(-w // 8, w // 8), h // 2
    box = (cx - side // 2, cy - side // 2, cx + side // 2, cy + side // 2)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(cx, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    return img


def make_shapes_dataset(root: Path, count: int = 8, seed: int = 0) -> Path:
    """`count` PNGs (the last two 192x64, the rest 128x128) with .txt captions; same files every time."""
    rng = random.Random(seed)
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for i in range(count):
        shape, colour = SHAPES[i % len(SHAPES)], names[i % len(names)]
        size = (192, 64) if i >= count - 2 else (128, 128)
        _draw(shape, COLOURS[colour], size, rng).save(folder / f"shape_{i:02d}.png")
        caption = f"ohwx shape, {shape}, {colour}, solid color, simple background"
        (folder / f"shape_{i:02d}.txt").write_text(caption + "\n", encoding="utf-8")
    return Path(root)


def demo_config(output_dir: Path, data_dir: Path, prompts: Path | None) -> TrainConfig:
    """The seed guide's recipe at tiny scale: DAdaptAdam, lr 1, cosine, no warm-up, rank 4, alpha 1."""
    return TrainConfig(
        pretrained_model_name_or_path="tiny", train_data_dir=str(data_dir), output_dir=str(output_dir / "lora"),
        output_name="demo_shapes", logging_dir=str(output_dir / "logs"), caption_extension=".txt",
        resolution="128", enable_bucket=True, min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=64,
        cache_latents=True, train_batch_size=2, max_train_epochs=3, save_every_n_epochs=1,
        optimizer_type="DAdaptAdam", optimizer_args=["decouple=True", "use_bias_correction=True", "weight_decay=0.20"],
        learning_rate=1.0, unet_lr=1.0, text_encoder_lr=1.0, lr_scheduler="cosine", lr_warmup_steps=0,
        network_dim=4, network_alpha=1.0, seed=42, sample_prompts=str(prompts) if prompts else None,
        sample_every_n_epochs=1 if prompts else None, sample_sampler="euler_a",
    )


def run_demo(output_dir: str | Path, steps_only: bool = False) -> int:
    """Generate the data, train, and print where the results are."""
    from library.fileio import atomic_write_text
    from library.training.console import ConsoleEvents
    from library.training.trainer import train

    import torch

    # The tiny model's ops are too small to split across threads: on a busy machine, thread
    # hand-offs cost more than the arithmetic (measured 0.3 s/step with one thread, 2-6 s with two).
    torch.set_num_threads(1)
    out = Path(output_dir).resolve()
    data = make_shapes_dataset(out / "dataset")
    prompts = out / "sample_prompts.txt"
    atomic_write_text(prompts, "\n".join(SAMPLE_PROMPTS) + "\n")
    result = train(demo_config(out, data, prompts), ConsoleEvents())
    print("\nDemo finished.")
    print(f"  dataset:      {data / FOLDER}")
    print(f"  LoRA files:   {', '.join(str(f) for f in result.files)}")
    samples = out / "lora" / "sample"
    if samples.is_dir():
        print(f"  samples:      {samples}")
    if result.log_dir:
        print(f"  TensorBoard:  tensorboard --logdir \"{out / 'logs'}\"  then open http://localhost:6006")
    return 0
