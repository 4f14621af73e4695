"""Image-quality measures behind `lorasmith dataset check`: sharpness, perceptual hash, aspect, diversity.

Pure functions on (H, W) grey or (H, W, 3) RGB uint8 arrays, so the dataset
check, the plan and the tests share one definition of "blurry" or "near-duplicate":

- sharpness: variance of the Laplacian (Pech-Pacheco et al. 2000, "Diatom
  autofocusing in brightfield microscopy"), measured after scaling the image so
  its short side is `SHARPNESS_SIDE` pixels, so a photo and its downscaled copy
  score alike. Calibrated in tests/test_dataset_check.py on three drawn, detailed
  768 px test photos (shapes and thin lines): sharp originals 713–1001,
  GaussianBlur(1) 98–141, GaussianBlur(2) 13–19, GaussianBlur(4) 3–4, the same
  photo at 400 px 286–387; `BLUR_THRESHOLD` = 50 passes the originals and a
  slight softening and fails radius 2 and more;
- near-duplicates: the DCT perceptual hash (Zauner 2010, "Implementation and
  Benchmarking of Perceptual Image Hash Functions"): 32×32 grey, 2-D DCT, the
  8×8 lowest frequencies against their median → 64 bits; two images whose hashes
  differ in at most `DUPLICATE_BITS` bits look the same at thumbnail scale;
- diversity: the mean pairwise Hamming distance of the hashes (32 ≈ unrelated
  images, 0 = all the same picture).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

SHARPNESS_SIDE = 512
BLUR_THRESHOLD = 50.0
DUPLICATE_BITS = 6
LOW_DIVERSITY_BITS = 12.0


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 luminance of an RGB or grey array."""
    if image.ndim == 2:
        return image
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)


def _scale_short_side(grey: np.ndarray, side: int) -> np.ndarray:
    import cv2

    h, w = grey.shape
    scale = side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(grey, size, interpolation=interp)


def laplacian_variance(image: np.ndarray, side: int = SHARPNESS_SIDE) -> float:
    """Variance of the Laplacian (Pech-Pacheco et al. 2000) at a short side of `side` pixels: low = blurry."""
    import cv2

    grey = _scale_short_side(to_grey(image), side)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def phash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash (Zauner 2010): 8×8 lowest DCT frequencies of a 32×32 grey copy vs their median."""
    import cv2

    small = cv2.resize(to_grey(image), (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])  # the DC term (overall brightness) would skew the median
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def near_duplicates(hashes: dict[str, int], max_bits: int = DUPLICATE_BITS) -> list[tuple[str, str, int]]:
    """Pairs (name, name, distance) whose hashes differ in at most `max_bits` bits, in name order."""
    names = sorted(hashes)
    return [(a, b, d) for a, b in combinations(names, 2) if (d := hamming(hashes[a], hashes[b])) <= max_bits]


def hash_spread(hashes: list[int]) -> float | None:
    """Mean pairwise Hamming distance (0 = identical pictures, ~32 = unrelated); None below two images."""
    if len(hashes) < 2:
        return None
    pairs = list(combinations(hashes, 2))
    return sum(hamming(a, b) for a, b in pairs) / len(pairs)


def aspect_ratio(size: tuple[int, int]) -> float:
    """Long side over short side (1.0 for a square)."""
    w, h = size
    return max(w, h) / min(w, h)


def bucket_aspect_limit(buckets: list[tuple[int, int]]) -> float:
    """The most elongated bucket's long/short ratio: images beyond it lose picture to the crop."""
    return max(aspect_ratio(b) for b in buckets) if buckets else 1.0


@dataclass
class Finding:
    """One thing to fix: which file (None for the whole set), what is wrong, what to do."""

    code: str  # blurry, faces, no_face, small, duplicate, aspect, count, diversity, batch, steps, token, …
    file: str | None
    message: str
    fix: str

    def line(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.message} -> {self.fix}"


@dataclass
class ImageQuality:
    """The measures of one training image (faces is None when face detection was not run)."""

    file: str  # folder/name
    width: int
    height: int
    sharpness: float
    phash: str  # 16 hex digits
    aspect: float
    faces: int | None = None


def measure(name: str, image: np.ndarray) -> ImageQuality:
    h, w = image.shape[:2]
    return ImageQuality(name, w, h, round(laplacian_variance(image), 1), f"{phash(image):016x}", round(aspect_ratio((w, h)), 3))


def image_findings(rows: list[ImageQuality], short_side: int, aspect_limit: float) -> list[Finding]:
    """Blurry, small, elongated and near-duplicate images among `rows`, each naming the file and the fix."""
    out = []
    for r in rows:
        if r.sharpness < BLUR_THRESHOLD:
            out.append(Finding("blurry", r.file, f"looks blurry (variance of the Laplacian {r.sharpness:.0f} < {BLUR_THRESHOLD:.0f})",
                               "replace it with a sharp photo or remove it: the LoRA learns the blur"))
        if min(r.width, r.height) < short_side:
            out.append(Finding("small", r.file, f"{r.width}x{r.height} is below the training resolution ({short_side} px short side)",
                               "use a larger original; upscaled pixels train soft detail"))
        if r.aspect > aspect_limit * 1.05:
            out.append(Finding("aspect", r.file, f"aspect ratio {r.aspect:.2f}:1 is beyond the widest bucket ({aspect_limit:.2f}:1)",
                               "crop it nearer to square (lorasmith dataset crop) or much of it is cut away"))
    for a, b, d in near_duplicates({r.file: int(r.phash, 16) for r in rows}):
        out.append(Finding("duplicate", b, f"near-duplicate of {a} (perceptual hashes {d} of 64 bits apart)",
                           "keep one of them: a duplicate counts twice and the LoRA overfits that picture"))
    return out


def set_findings(rows: list[ImageQuality]) -> list[Finding]:
    """Diversity of the whole set from the spread of the perceptual hashes."""
    spread = hash_spread([int(r.phash, 16) for r in rows])
    if spread is not None and spread < LOW_DIVERSITY_BITS:
        return [Finding("diversity", None, f"the images look alike (mean perceptual-hash distance {spread:.1f} of 64 bits; "
                        f"unrelated photos are ~32, below {LOW_DIVERSITY_BITS:.0f} is flagged)",
                        "vary pose, distance, lighting, clothes and background so the LoRA learns the subject, not one picture")]
    return []


def plan_image_findings(prepared: Any) -> tuple[list[Finding], int]:
    """The per-image checks of `dataset check` (blur, size, aspect, near-duplicates, diversity) for the plan.

    `prepared` is library.data.prepare's PreparedData. Face counting needs OpenCV and
    is left to `lorasmith dataset check`; this reads only the training images the
    plan uses (regularization images are other people on purpose), each once, with
    the subset's own image options. Returns the findings and how many images were measured.
    """
    from library.data.images import load_rgb

    rows: list[ImageQuality] = []
    short_side, limit = 0, None
    for layout in prepared.layouts:
        short_side = max(short_side, min(layout.spec.resolution))
        if layout.buckets:
            wide = bucket_aspect_limit([b for b, _ in layout.buckets])
            limit = wide if limit is None else min(limit, wide)
        seen: set[Path] = set()
        for item in layout.items:
            path = item.image.path
            if item.is_reg or path in seen:
                continue
            seen.add(path)
            options = layout.spec.subsets[item.subset_index].image
            rows.append(measure(f"{path.parent.name}/{path.name}", load_rgb(path, options)))
    return image_findings(rows, short_side, limit or 1.5) + set_findings(rows), len(rows)
