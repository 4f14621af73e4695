"""A small deterministic dataset with two aspect ratios, for tests and benchmarks that need buckets.

Six colours of circles, squares and triangles on a light background: 128x128 images
plus two 192x64 ones, so bucketing has two buckets to fill. It is not the shapes world
(library.world.generator, 64x64, what tiny-world was pretrained on); the demo uses
that world's held-back star instead.
"""
from __future__ import annotations

import random
from pathlib import Path

FOLDER = "10_ohwx shape"
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 200), "yellow": (220, 200, 40),
           "purple": (140, 60, 170), "orange": (240, 140, 40)}


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
