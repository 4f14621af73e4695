"""Latents computed once per image and bucket, kept in RAM and optionally on disk beside the image.

What is cached: the VAE's `latent_dist.sample()`, *unscaled* — as sd-scripts
caches it; the trainer multiplies by `vae.config.scaling_factor` (0.18215 for
SD1.x) for cached and uncached batches alike. With `flip_aug` the mirrored
image's latents are cached too. The sample's noise is seeded from the image
content and bucket only, so the cache is the same whatever the batch, the
order or the training seed.

Disk files are named `<stem>_<W>x<H>_lorasmith.safetensors` (bucket size,
4 digits each) and carry in their metadata the image's SHA-256, the VAE's
fingerprint, the bucket and resize size and whether flipped latents are
present, and the loss mask's identity (none, the image's alpha channel, or the
SHA-256 of the mask file): a mask is cached with the latents (as the 0..255
weights fitted to the bucket) and an edited mask recomputes the file. A file is
reused only when all of them still match; otherwise (or
when it cannot be read) it is recomputed — unlike sd-scripts, whose `.npz`
goes stale when an image is edited. Files are written atomically.
"""
from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from library.data.buckets import Reso
from library.data.images import item_pixels
from library.data.masks import ALPHA, MaskSource, fit_mask, load_mask
from library.data.specs import ImageOptions
from library.errors import DatasetError
from library.fileio import atomic_path, write_failure_reason

log = logging.getLogger(__name__)
CACHE_SUFFIX = "_lorasmith.safetensors"
FORMAT = "lorasmith-latents-2"  # 2: pixels read by open_image (EXIF, 16-bit, alpha background); a "mask" entry is optional


@dataclass(frozen=True)
class LatentRequest:
    """One image to cache: a key the caller chooses, the file, its bucket and cover size."""

    key: object
    path: Path
    bucket: Reso
    resized_size: Reso
    mask: MaskSource = None  # with masked_loss: a mask file or the image's alpha channel
    image_size: Reso | None = None  # the scanned size the bucket came from (a mask must match it)
    options: ImageOptions = ImageOptions()


@dataclass
class CachedLatents:
    latents: torch.Tensor  # (4, H/8, W/8), unscaled
    flipped: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # (1, H, W) uint8 loss weights fitted to the bucket (not flipped)


def cache_file(image_path: Path, bucket: Reso) -> Path:
    """Where the disk cache of `image_path` in `bucket` lives."""
    image_path = Path(image_path)
    return image_path.with_name(f"{image_path.stem}_{bucket[0]:04d}x{bucket[1]:04d}{CACHE_SUFFIX}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """SHA-256 over the VAE's parameter and buffer names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def mask_id(req: LatentRequest) -> str:
    """What identifies the mask in the cache key: none, the image's alpha (covered by its hash), the mask file's hash."""
    if req.mask is None:
        return "none"
    return "alpha" if req.mask == ALPHA else "file:" + file_sha256(Path(req.mask))


def expected_metadata(image_sha: str, vae_id: str, req: LatentRequest, flip: bool) -> dict[str, str]:
    meta = {"mask": mask_id(req)} if req.mask is not None else {}
    return meta | {
        "format": FORMAT,
        "image_sha256": image_sha,
        "vae": vae_id,
        "bucket": f"{req.bucket[0]}x{req.bucket[1]}",
        "resized_size": f"{req.resized_size[0]}x{req.resized_size[1]}",
        "flipped": "1" if flip else "0",
        "alpha_background": "#%02x%02x%02x" % req.options.background,
    }


def read_cache(path: Path, expected: dict[str, str]) -> CachedLatents | None:
    """The cached latents when `path` exists and matches `expected`; None (with a warning if damaged)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if any(meta.get(k) != v for k, v in expected.items()):
                return None
            latents = fh.get_tensor("latents")
            flipped = fh.get_tensor("latents_flipped") if expected["flipped"] == "1" else None
            mask = fh.get_tensor("mask") if "mask" in expected else None
    except Exception as exc:  # safetensors raises several types for truncated or garbled files
        log.warning("latent cache %s is damaged (%s); recomputing it", path, exc)
        return None
    return CachedLatents(latents, flipped, mask)


def write_cache(path: Path, cached: CachedLatents, metadata: dict[str, str]) -> None:
    tensors = {"latents": cached.latents.contiguous()}
    if cached.flipped is not None:
        tensors["latents_flipped"] = cached.flipped.contiguous()
    if cached.mask is not None:
        tensors["mask"] = cached.mask.contiguous()
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
    except Exception as exc:  # a full disk arrives as SafetensorError, not OSError
        reason = write_failure_reason(exc, path)
        if reason is None:
            raise
        raise DatasetError(f"cannot write the latent cache {path}: {reason}", [
            "no half file was left; free disk space, or train without --cache_latents_to_disk (latents stay in memory)"]) from None


def noise_seed(image_sha: str, bucket: Reso, flipped: bool) -> int:
    text = f"{image_sha}:{bucket[0]}x{bucket[1]}:{int(flipped)}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def encode_batch(vae, pixels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """Unscaled latent samples (B, 4, h, w); each item's noise from its own seed (batch-independent)."""
    dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
    noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])
    return (dist.mean + dist.std * noise.to(dist.mean.device, dist.mean.dtype)).float().cpu()


def _compute(vae, group: list[tuple[LatentRequest, str]], flip_aug: bool) -> list[CachedLatents]:
    pixels = torch.stack([item_pixels(r.path, r.bucket, r.resized_size, options=r.options) for r, _ in group])
    latents = encode_batch(vae, pixels, [noise_seed(sha, r.bucket, False) for r, sha in group])
    flipped = None
    if flip_aug:
        flipped = encode_batch(vae, torch.flip(pixels, dims=[3]), [noise_seed(sha, r.bucket, True) for r, sha in group])
    out = []
    for i, (req, _) in enumerate(group):
        item = CachedLatents(latents[i], None if flipped is None else flipped[i], _fitted_mask(req))
        if not torch.isfinite(item.latents).all() or (item.flipped is not None and not torch.isfinite(item.flipped).all()):
            raise DatasetError(f"{req.path}: the VAE produced NaN/inf latents", [f"{req.path}: check the image, or use a VAE in fp32"])
        out.append(item)
    return out


def _fitted_mask(req: LatentRequest) -> torch.Tensor | None:
    """The request's mask with the cached image's geometry (centre crop, no flip), as (1, H, W) uint8."""
    raw = load_mask(req.mask, req.path)
    if raw is None:
        return None
    size = req.image_size or (raw.shape[1], raw.shape[0])
    where = req.path if req.mask == ALPHA else Path(req.mask)
    fitted = fit_mask(raw, size, req.bucket, req.resized_size, False, random.Random(0), False, where)
    return torch.from_numpy(fitted.copy()).unsqueeze(0)


def cache_latents(
    requests: list[LatentRequest],
    vae,
    *,
    flip_aug: bool = False,
    to_disk: bool = False,
    vae_batch_size: int = 1,
    vae_id: str | None = None,
    progress: bool = True,
    report: Callable[[int, int], None] | None = None,
) -> dict[object, CachedLatents]:
    """Latents for every request, reusing valid disk files; batches of one bucket go through the VAE.

    `report(done, total)` is called before the first batch and after each one (images still to encode),
    so a caller without a terminal (the GUI's progress file) can show counts and an ETA.
    """
    from tqdm import tqdm

    vae_id = vae_id or vae_fingerprint(vae)
    result: dict[object, CachedLatents] = {}
    pending: list[tuple[LatentRequest, str]] = []
    for req in requests:
        sha = file_sha256(req.path)
        if to_disk:
            found = read_cache(cache_file(req.path, req.bucket), expected_metadata(sha, vae_id, req, flip_aug))
            if found is not None:
                result[req.key] = found
                continue
        pending.append((req, sha))
    pending.sort(key=lambda p: (p[0].bucket[0] * p[0].bucket[1], p[0].bucket))
    groups = _group_by_bucket(pending, max(1, vae_batch_size))
    done = 0
    if report is not None and pending:
        report(0, len(pending))
    for group in tqdm(groups, desc="caching latents", disable=not progress or not groups):
        for (req, sha), cached in zip(group, _compute(vae, group, flip_aug)):
            result[req.key] = cached
            if to_disk:
                write_cache(cache_file(req.path, req.bucket), cached, expected_metadata(sha, vae_id, req, flip_aug))
        done += len(group)
        if report is not None:
            report(done, len(pending))
    return result


def _group_by_bucket(pending: list, size: int) -> list[list]:
    groups: list[list] = []
    for entry in pending:
        if groups and groups[-1][0][0].bucket == entry[0].bucket and len(groups[-1]) < size:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    return groups
