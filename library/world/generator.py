"""The shapes world: a synthetic, seeded image world with captions and labels.

It exists so that the built-in `tiny-world` base model can be pretrained on CPU
in minutes and so that tests can tell whether a LoRA actually taught something:
every image comes with its caption in words ("a red circle on a white
background") and its labels (shape, colour, background, size), which a tiny
classifier can check generated images against.

One shape (`HELD_BACK_SHAPE`, the star) never appears in the pretraining world;
`write_concept_folder` writes it as the demo LoRA's `ohwx shape` training set.

Everything is a pure function of the seed: image i of a world depends only on
(seed, i), so any slice can be regenerated without the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from library.errors import ConfigError
from library.fileio import atomic_path, atomic_write_text
from library.world.shapes import SHAPES

IMAGE_SIZE = 64
SUPERSAMPLE = 4

WORLD_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring")
HELD_BACK_SHAPE = "star"
ALL_SHAPES: tuple[str, ...] = WORLD_SHAPES + (HELD_BACK_SHAPE,)

# Few, well-separated colours: the 8x-downsampling VAE and a 2.4M-parameter UNet
# confuse neighbours (orange/yellow, purple/blue) when there are more.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 165, 60),
    "blue": (35, 70, 215),
    "yellow": (240, 205, 30),
}
BACKGROUNDS: tuple[str, ...] = ("white", "black", "gray and white")
_PLAIN_RGB = {"white": (240, 240, 240), "black": (25, 25, 25)}
_TWO_TONE_RGB = ((240, 240, 240), (130, 130, 130))
SIZES: dict[str, tuple[float, float]] = {"small": (9.0, 12.5), "large": (15.0, 20.0)}
COLOUR_JITTER = 12

# Captions drop the size word / the background phrase this often, so that short
# prompts like "a red circle" are in distribution for the text encoder.
DROP_SIZE_P = 0.5
DROP_BACKGROUND_P = 0.3


@dataclass(frozen=True)
class Scene:
    """Everything that decides one image; rendering it is deterministic."""

    shape: str
    colour: str
    background: str
    size: str
    cx: float
    cy: float
    r: float
    rgb: tuple[int, int, int]
    split: tuple[str, int]  # two-tone background: ("h" | "v", boundary pixel)


@dataclass
class World:
    """A batch of world images with captions and integer labels (indices into the name tuples)."""

    images: np.ndarray  # uint8 [N, 64, 64, 3]
    captions: list[str]
    shape: np.ndarray  # int64 [N], index into ALL_SHAPES
    colour: np.ndarray  # int64 [N], index into tuple(COLOURS)
    background: np.ndarray  # int64 [N], index into BACKGROUNDS
    size: np.ndarray  # int64 [N], index into tuple(SIZES)

    def __len__(self) -> int:
        return len(self.captions)


def sample_scene(rng: np.random.Generator, shapes: tuple[str, ...] = WORLD_SHAPES,
                 colour: str | None = None, background: str | None = None) -> Scene:
    """Draw one scene; `colour`/`background` pin those attributes when given."""
    shape = shapes[rng.integers(len(shapes))]
    colour = colour or tuple(COLOURS)[rng.integers(len(COLOURS))]
    background = background or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    size = tuple(SIZES)[rng.integers(len(SIZES))]
    r = float(rng.uniform(*SIZES[size]))
    margin = r * 1.1 + 2.0
    cx, cy = (float(v) for v in rng.uniform(margin, IMAGE_SIZE - margin, size=2))
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    rgb = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
    split = ("hv"[rng.integers(2)], int(rng.integers(20, 45)))
    return Scene(shape, colour, background, size, cx, cy, r, rgb, split)


def render(scene: Scene) -> np.ndarray:
    """Draw a scene as uint8 [64, 64, 3]; edges anti-aliased by 4x supersampling of the shape's box."""
    img = _background(scene).astype(np.float32)
    x0, x1 = _box(scene.cx, scene.r)
    y0, y1 = _box(scene.cy, scene.r)
    s = SUPERSAMPLE
    ys = y0 + (np.arange((y1 - y0) * s) + 0.5) / s
    xs = x0 + (np.arange((x1 - x0) * s) + 0.5) / s
    gx, gy = np.meshgrid(xs, ys)
    mask = SHAPES[scene.shape](gx, gy, scene.cx, scene.cy, scene.r).astype(np.float32)
    cover = mask.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))[..., None]
    patch = img[y0:y1, x0:x1]
    img[y0:y1, x0:x1] = patch * (1.0 - cover) + np.asarray(scene.rgb, np.float32) * cover
    return np.round(img).astype(np.uint8)


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """Caption in words, e.g. "a large red circle on a white background" (parts dropped at random)."""
    size = "" if rng.random() < DROP_SIZE_P else f"{scene.size} "
    text = f"a {size}{scene.colour} {scene.shape}"
    if rng.random() >= DROP_BACKGROUND_P:
        text += f" on a {scene.background} background"
    return text


def full_caption(scene: Scene) -> str:
    """The caption with every part present (what evaluation prompts look like)."""
    return f"a {scene.size} {scene.colour} {scene.shape} on a {scene.background} background"


def generate_world(n: int, seed: int, shapes: tuple[str, ...] = WORLD_SHAPES, start: int = 0) -> World:
    """Images start..start+n-1 of the world with this seed; image i depends only on (seed, i)."""
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions: list[str] = []
    labels = np.empty((4, n), dtype=np.int64)
    for k in range(n):
        rng = np.random.default_rng([seed, start + k])
        scene = sample_scene(rng, shapes)
        images[k] = render(scene)
        captions.append(caption(scene, rng))
        labels[:, k] = _label_indices(scene)
    return World(images, captions, labels[0], labels[1], labels[2], labels[3])


def write_concept_folder(root: str | Path, n: int = 8, seed: int = 0, repeats: int = 10,
                         token: str = "ohwx", class_word: str = "shape", colour: str = "blue",
                         background: str | None = "white") -> Path:
    """Write n images of the held-back star as `<root>/<repeats>_<token> <class>/` with .txt captions.

    This is the demo LoRA's training set: a shape the base model never saw, in a
    fixed colour and background so that a test can see it appear. Pick a colour the
    base model does not already give the unknown prompt "ohwx shape": blue on white
    in 8 of 32 samples with the shipped tiny-world (an earlier build drew it red in
    31 of 32, which would have hidden a red concept). Captions are just
    "<token> <class>" as in a DreamBooth-style dataset. Returns the folder.
    """
    if colour not in COLOURS:
        raise ConfigError(f"concept colour {colour!r} is not one of the world's colours",
                          [f"use one of {tuple(COLOURS)}"])
    folder = Path(root) / f"{repeats}_{token} {class_word}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng([seed, 1_000_003, i])
        scene = sample_scene(rng, (HELD_BACK_SHAPE,), colour=colour, background=background)
        with atomic_path(folder / f"{i:03d}.png") as tmp:
            Image.fromarray(render(scene)).save(tmp, format="PNG")
        atomic_write_text(folder / f"{i:03d}.txt", f"{token} {class_word}\n")
    return folder


def _background(scene: Scene) -> np.ndarray:
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    if scene.background in _PLAIN_RGB:
        img[:] = _PLAIN_RGB[scene.background]
        return img
    axis, at = scene.split
    img[:] = _TWO_TONE_RGB[0]
    if axis == "h":
        img[at:] = _TWO_TONE_RGB[1]
    else:
        img[:, at:] = _TWO_TONE_RGB[1]
    return img


def _box(c: float, r: float) -> tuple[int, int]:
    lo = max(0, int(np.floor(c - 1.2 * r)) - 1)
    hi = min(IMAGE_SIZE, int(np.ceil(c + 1.2 * r)) + 1)
    return lo, hi


def _label_indices(scene: Scene) -> tuple[int, int, int, int]:
    return (ALL_SHAPES.index(scene.shape), tuple(COLOURS).index(scene.colour),
            BACKGROUNDS.index(scene.background), tuple(SIZES).index(scene.size))
