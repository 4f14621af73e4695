"""A tiny CNN that reads shape, colour and background off a 64x64 world image.

It is the measuring stick for "did the model draw what the prompt asked for":
trained in seconds on CPU on freshly generated world images (the held-back star
included, so it can also tell when a LoRA taught the star), it labels generated
samples, and prompt-following accuracy is the fraction whose labels match the
prompt.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from library.world.generator import ALL_SHAPES, BACKGROUNDS, COLOURS, World, generate_world

HEADS = {"shape": len(ALL_SHAPES), "colour": len(COLOURS), "background": len(BACKGROUNDS)}


class WorldClassifier(nn.Module):
    """Five stride-2 conv layers (receptive field covers the whole 64 px image), mean+max pooling, linear heads."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, width // 2, width, 2 * width, 2 * width, 2 * width]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Linear(2 * channels[-1], n) for name, n in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(x)
        h = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return {name: head(h) for name, head in self.heads.items()}


def to_input(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N,64,64,3] (numpy or torch) -> float [N,3,64,64] in [-1, 1]."""
    t = torch.as_tensor(np.asarray(images_uint8))
    return t.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _targets(world: World) -> dict[str, torch.Tensor]:
    return {"shape": torch.from_numpy(world.shape), "colour": torch.from_numpy(world.colour),
            "background": torch.from_numpy(world.background)}


def soften(x: torch.Tensor, generator: torch.Generator, max_sigma: float = 1.5, noise: float = 0.05) -> torch.Tensor:
    """Random Gaussian blur (per image, sigma in [0, max_sigma] px) plus a little pixel noise.

    Generated images are softer than the crisp renders: a tiny VAE decodes edges a
    pixel or two wide. Training on softened renders keeps the measuring stick about
    shape and colour, not about edge sharpness.
    """
    n = x.shape[0]
    sigma = torch.rand(n, generator=generator) * max_sigma
    offsets = torch.arange(-3, 4, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma.clamp(min=1e-3)[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # sigma ~ 0 -> a delta: the image unchanged
    k = kernel.repeat_interleave(3, dim=0)  # [n*3, 7], one kernel per image channel
    flat = x.reshape(1, n * 3, *x.shape[2:])
    flat = F.conv2d(F.pad(flat, (3, 3, 0, 0), mode="replicate"), k[:, None, None, :], groups=n * 3)
    flat = F.conv2d(F.pad(flat, (0, 0, 3, 3), mode="replicate"), k[:, None, :, None], groups=n * 3)
    return flat.reshape(x.shape) + noise * torch.randn(x.shape, generator=generator)


def train_classifier(seed: int = 0, n_images: int = 4000, steps: int = 800, batch_size: int = 64) -> WorldClassifier:
    """Train on a world that includes the held-back star (deterministic from seed; ~15-30 s on CPU)."""
    world = generate_world(n_images, seed=seed + 7919, shapes=ALL_SHAPES)
    x_all, targets = to_input(world.images), _targets(world)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WorldClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randint(0, n_images, (batch_size,), generator=gen)
        out = model(soften(x_all[idx], gen))
        loss = sum(F.cross_entropy(out[k], targets[k][idx]) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: WorldClassifier, images_uint8: np.ndarray | torch.Tensor) -> dict[str, list[str]]:
    """Predicted label names per image, e.g. {"shape": ["circle", ...], "colour": [...], ...}."""
    out = model(to_input(images_uint8))
    names = {"shape": ALL_SHAPES, "colour": tuple(COLOURS), "background": BACKGROUNDS}
    return {k: [names[k][i] for i in v.argmax(dim=1).tolist()] for k, v in out.items()}


@torch.no_grad()
def accuracy(model: WorldClassifier, world: World) -> dict[str, float]:
    """Per-head accuracy on labelled world images (how far the measuring stick can be trusted)."""
    out = model(to_input(world.images))
    targets = _targets(world)
    return {k: float((out[k].argmax(dim=1) == targets[k]).float().mean()) for k in HEADS}
