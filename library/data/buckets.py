"""Aspect-ratio bucket geometry, computed exactly as kohya-ss/sd-scripts does.

Facts carried over from sd-scripts (`model_util.make_bucket_resolutions` and
`train_util.BucketManager`): the bucket list covers at most the training area
(width × height of `--resolution`), sides are multiples of `bucket_reso_steps`
within `[min_bucket_reso, max_bucket_reso]`, and the square bucket is always
present. An image goes to the bucket whose aspect ratio is nearest its own, is
scaled so it covers the bucket, and the overhang is cropped (centre, or random
with `random_crop`). With `bucket_no_upscale` the bucket is derived from the
image itself: it is only ever shrunk to the training area, then cut down to
multiples of the step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Reso = tuple[int, int]  # (width, height), the order sd-scripts uses everywhere


@dataclass(frozen=True)
class BucketGeometry:
    """How buckets are chosen for one dataset (sd-scripts' dataset-level options)."""

    resolution: Reso
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False


@dataclass(frozen=True)
class BucketChoice:
    """Where one image goes: its bucket, the size it is resized to before cropping, the aspect error."""

    bucket: Reso
    resized_size: Reso
    ar_error: float


def make_bucket_resolutions(max_reso: Reso, min_size: int = 256, max_size: int = 1024, divisible: int = 64) -> list[Reso]:
    """All bucket sizes with area ≤ max_reso's area, sides multiples of `divisible`, sorted (sd-scripts)."""
    max_area = max_reso[0] * max_reso[1]
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos = {(side, side)}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


def adjust_bucket_limits(min_reso: int, max_reso: int, steps: int) -> tuple[int, int]:
    """Round min down and max up to multiples of the step, as sd-scripts does before bucketing."""
    if min_reso % steps:
        min_reso -= min_reso % steps
    if max_reso % steps:
        max_reso += steps - max_reso % steps
    return min_reso, max_reso


def round_to_steps(x: float, steps: int) -> int:
    """Round half up, then down to a multiple of `steps` (sd-scripts' BucketManager.round_to_steps)."""
    xi = int(x + 0.5)
    return xi - xi % steps


def cover_size(image_size: Reso, bucket: Reso) -> Reso:
    """Size the image is scaled to so it covers `bucket` with its aspect kept (rounded half up)."""
    w, h = image_size
    if w / h > bucket[0] / bucket[1]:  # wider than the bucket: match heights
        scale = bucket[1] / h
    else:
        scale = bucket[0] / w
    return int(w * scale + 0.5), int(h * scale + 0.5)


def select_predefined(image_size: Reso, resos: list[Reso]) -> BucketChoice:
    """Nearest-aspect-ratio bucket among `resos` (an exact size match wins), then cover-resize."""
    w, h = image_size
    aspect = w / h
    if image_size in set(resos):
        bucket = image_size
    else:
        ratios = np.array([bw / bh for bw, bh in resos])
        bucket = resos[int(np.abs(ratios - aspect).argmin())]
    return BucketChoice(bucket, cover_size(image_size, bucket), bucket[0] / bucket[1] - aspect)


def select_no_upscale(image_size: Reso, max_area: int, steps: int) -> BucketChoice:
    """sd-scripts' `bucket_no_upscale`: shrink only if above `max_area`, bucket = size cut to the step."""
    w, h = image_size
    aspect = w / h
    if w * h > max_area:
        rw = math.sqrt(max_area * aspect)
        rh = max_area / rw
        bw_r = round_to_steps(rw, steps)
        bh_in_wr = round_to_steps(bw_r / aspect, steps)
        bh_r = round_to_steps(rh, steps)
        bw_in_hr = round_to_steps(bh_r * aspect, steps)
        err_w = abs(bw_r / bh_in_wr - aspect) if bh_in_wr else math.inf
        err_h = abs(bw_in_hr / bh_r - aspect) if bh_r else math.inf
        if err_w < err_h:
            resized = (bw_r, int(bw_r / aspect + 0.5))
        else:
            resized = (int(bh_r * aspect + 0.5), bh_r)
    else:
        resized = (w, h)
    bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
    return BucketChoice(bucket, resized, bucket[0] / bucket[1] - aspect)


class BucketSelector:
    """Assigns images to buckets for one dataset; remembers the predefined list once."""

    def __init__(self, geometry: BucketGeometry) -> None:
        self.geometry = geometry
        if not geometry.enable_bucket:
            self.resos = [geometry.resolution]
        elif not geometry.bucket_no_upscale:
            lo, hi = adjust_bucket_limits(geometry.min_bucket_reso, geometry.max_bucket_reso, geometry.bucket_reso_steps)
            self.resos = make_bucket_resolutions(geometry.resolution, lo, hi, geometry.bucket_reso_steps)
        else:
            self.resos = []

    def select(self, image_size: Reso) -> BucketChoice:
        g = self.geometry
        if g.enable_bucket and g.bucket_no_upscale:
            return select_no_upscale(image_size, g.resolution[0] * g.resolution[1], g.bucket_reso_steps)
        return select_predefined(image_size, self.resos)


def crop_ltrb(bucket: Reso, image_size: Reso) -> tuple[float, float, float, float]:
    """sd-scripts' crop box of the original image inside the bucket (used for SDXL-style size conditioning)."""
    bucket_ar = bucket[0] / bucket[1]
    image_ar = image_size[0] / image_size[1]
    if bucket_ar > image_ar:
        rw, rh = bucket[1] * image_ar, bucket[1]
    else:
        rw, rh = bucket[0], bucket[0] / image_ar
    left = (bucket[0] - rw) // 2
    top = (bucket[1] - rh) // 2
    return left, top, left + rw, top + rh


def crop_offsets(resized_size: Reso, bucket: Reso, random_crop: bool, rng) -> tuple[int, int]:
    """(left, top) of the bucket-sized window inside the resized image: centred, or random."""
    offsets = []
    for length, target in zip(resized_size, bucket):
        trim = max(0, length - target)
        offsets.append(rng.randint(0, trim) if (random_crop and trim) else trim // 2)
    return offsets[0], offsets[1]


def bucket_info(resos_and_counts: list[tuple[Reso, int]], ar_errors: list[float]) -> dict:
    """The `ss_bucket_info` dict: buckets sorted by resolution, numbered, with counts (repeats included)."""
    buckets = {}
    for i, (reso, count) in enumerate(sorted(resos_and_counts)):
        if count > 0:
            buckets[i] = {"resolution": [int(reso[0]), int(reso[1])], "count": int(count)}
    mean_error = float(np.mean(np.abs(ar_errors))) if ar_errors else 0.0
    return {"buckets": buckets, "mean_img_ar_error": mean_error}
