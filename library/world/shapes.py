"""Shape coverage masks for the synthetic shapes world.

Every function takes pixel-centre coordinates `x`, `y` (arrays of the same
shape, in pixels), a centre `(cx, cy)` and a half-size `r` (the radius of the
shape's bounding circle, so all shapes of one size look about equally big), and
returns a boolean mask. The generator renders at 4x and averages down, which
anti-aliases the edges without any per-shape special cases.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Mask = np.ndarray
ShapeFn = Callable[[np.ndarray, np.ndarray, float, float, float], Mask]


def circle(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> Mask:
    """Filled disc of radius r."""
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r


def ring(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> Mask:
    """Annulus: outer radius r, inner radius 0.55 r (thick enough to survive 8x VAE downsampling)."""
    d2 = (x - cx) ** 2 + (y - cy) ** 2
    return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)


def square(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> Mask:
    """Axis-aligned square; half-side 0.8 r so its area is close to the disc's."""
    h = 0.8 * r
    return (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)


def triangle(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> Mask:
    """Upright equilateral triangle inscribed in the circle of radius r (a little enlarged)."""
    return polygon(x, y, _regular_vertices(cx, cy, 1.1 * r, 3, 0.0))


def star(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> Mask:
    """Upright five-pointed star, inner radius 0.45 r: the concept held back from pretraining."""
    outer = _regular_vertices(cx, cy, 1.1 * r, 5, 0.0)
    inner = _regular_vertices(cx, cy, 0.5 * r, 5, math.pi / 5)
    verts = [v for pair in zip(outer, inner) for v in pair]
    return polygon(x, y, verts)


def plus(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> Mask:
    """Plus sign (a Greek cross): two bars of half-width 0.35 r."""
    w = 0.35 * r
    dx, dy = np.abs(x - cx), np.abs(y - cy)
    return ((dx <= w) & (dy <= r)) | ((dy <= w) & (dx <= r))


def polygon(x: np.ndarray, y: np.ndarray, verts: list[tuple[float, float]]) -> Mask:
    """Even-odd point-in-polygon test (ray casting), vectorised over pixels."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        x0, y0 = verts[i]
        x1, y1 = verts[(i + 1) % n]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def _regular_vertices(cx: float, cy: float, r: float, n: int, phase: float) -> list[tuple[float, float]]:
    """Vertices of a regular n-gon with one vertex pointing up (image y grows downwards)."""
    return [
        (cx + r * math.sin(phase + 2 * math.pi * k / n), cy - r * math.cos(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


SHAPES: dict[str, ShapeFn] = {
    "circle": circle,
    "square": square,
    "triangle": triangle,
    "ring": ring,
    "plus": plus,
    "star": star,
}
