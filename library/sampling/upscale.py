"""Image upscaling for hires fix and `lorasmith upscale`: Lanczos, or an upscaler model run in tiles.

Models (ESRGAN/RealESRGAN/SwinIR/...) are loaded with spandrel, the loader ComfyUI uses;
the weights are read without unpickling code (`torch.load(weights_only=True)` or
safetensors) before spandrel sees them, so a malicious `.pth` cannot execute.
Tiling lets a 2048 px image go through a model in the memory of one tile: tiles
overlap by `overlap` input pixels and the overlaps are blended with linear ramps
(feathered weights), so seams do not show.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from library.errors import ModelLoadError, SamplingError

ImageModel = Callable[[torch.Tensor], torch.Tensor]


def lanczos_upscale(image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's "Lanczos" upscaler: PIL's LANCZOS resample to the exact size."""
    return image.convert("RGB").resize((int(width), int(height)), resample=Image.LANCZOS)


def _ramp_weights(length: int, start_fade: int, end_fade: int) -> torch.Tensor:
    """1 in the middle, rising over `start_fade` pixels and falling over `end_fade`.

    The outer quarter of each fade weighs (almost) nothing: a model's output next to
    a tile edge saw zero padding instead of the neighbouring pixels, so it is the part
    to discard; the ramp across the middle half blends the two tiles smoothly.
    """
    def ramp(fade: int) -> torch.Tensor:
        margin = fade // 4
        i = torch.arange(fade, dtype=torch.float32)
        return ((i - margin + 1) / (fade - 2 * margin + 1)).clamp(1e-4, 1.0)

    w = torch.ones(length)
    if start_fade > 0:
        w[:start_fade] = torch.minimum(w[:start_fade], ramp(start_fade))
    if end_fade > 0:
        w[length - end_fade:] = torch.minimum(w[length - end_fade:], ramp(end_fade).flip(0))
    return w


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


@torch.no_grad()
def tiled_apply(model: ImageModel, x: torch.Tensor, scale: int, tile: int = 512, overlap: int = 32) -> torch.Tensor:
    """Run `model` (N,C,H,W → N,C',H*scale,W*scale) over overlapping tiles and blend them.

    `tile` <= 0 runs the whole image at once. Overlaps are blended with weights that
    ramp linearly across the overlap, so an exact model (no receptive field beyond
    the overlap) gives the untiled result up to rounding.
    """
    n, _, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return model(x)
    if overlap < 0 or overlap >= tile:
        raise SamplingError(f"tile overlap {overlap} must be within 0..tile size-1 ({tile - 1})")
    out = weight = None
    ys, xs = _tile_starts(h, tile, overlap), _tile_starts(w, tile, overlap)
    for yi, y0 in enumerate(ys):
        for xi, x0 in enumerate(xs):
            th, tw = min(tile, h), min(tile, w)
            piece = model(x[:, :, y0:y0 + th, x0:x0 + tw])
            if out is None:
                out = torch.zeros(n, piece.shape[1], h * scale, w * scale, dtype=piece.dtype, device=piece.device)
                weight = torch.zeros(1, 1, h * scale, w * scale, dtype=piece.dtype, device=piece.device)
            fy = (ys[yi - 1] + th - y0) * scale if yi > 0 else 0  # overlap with the tile above
            fy_end = (y0 + th - ys[yi + 1]) * scale if yi + 1 < len(ys) else 0
            fx = (xs[xi - 1] + tw - x0) * scale if xi > 0 else 0
            fx_end = (x0 + tw - xs[xi + 1]) * scale if xi + 1 < len(xs) else 0
            wy = _ramp_weights(th * scale, fy, fy_end).to(piece)
            wx = _ramp_weights(tw * scale, fx, fx_end).to(piece)
            wt = (wy[:, None] * wx[None, :])[None, None]
            ys_, xs_ = slice(y0 * scale, (y0 + th) * scale), slice(x0 * scale, (x0 + tw) * scale)
            out[:, :, ys_, xs_] += piece * wt
            weight[:, :, ys_, xs_] += wt
    return out / weight


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    arr = (x[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr)


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """An upscaler's state dict, without executing pickled code (weights-only / safetensors)."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"upscaler model {p}: no such file; pass an ESRGAN/RealESRGAN/SwinIR .pth or .safetensors")
    try:
        if p.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any refusal (pickled code, corrupt file) becomes one message
        raise ModelLoadError(f"upscaler model {p}: cannot be read as weights ({type(exc).__name__}: {exc}); "
                             "only plain tensor files are loaded, never pickled code") from None
    for wrapper in ("params_ema", "params", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"upscaler model {p}: not a state dict of tensors")
    return state


class ModelUpscaler:
    """An upscaler model file loaded with spandrel; `upscale(image, scale)` runs it tiled."""

    def __init__(self, path: str | os.PathLike[str], tile: int = 512, overlap: int = 32,
                 device: str | torch.device = "cpu") -> None:
        state = read_weights(path)
        try:
            from spandrel import ModelLoader
        except ImportError as exc:
            raise ModelLoadError("upscaler models need spandrel: pip install 'lorasmith[upscale]' "
                                 f"(import failed: {exc})") from None
        try:
            descriptor = ModelLoader(device=device).load_from_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - spandrel raises UnsupportedModelError and friends
            raise ModelLoadError(f"upscaler model {path}: architecture not recognised by spandrel ({exc}); "
                                 "use an ESRGAN/RealESRGAN/SwinIR/... image-to-image model") from None
        self.name = Path(path).stem
        self.descriptor = descriptor
        self.scale = int(descriptor.scale)
        self.tile, self.overlap, self.device = tile, overlap, torch.device(device)
        descriptor.model.eval()

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.descriptor.model(x.to(self.device))

    def upscale(self, image: Image.Image, width: int, height: int) -> Image.Image:
        """Run the model (repeatedly, as A1111 does, while the image is still smaller) then Lanczos to size."""
        img = image.convert("RGB")
        while img.width < width or img.height < height:
            before = img.size
            img = tensor_to_image(tiled_apply(self._run, image_to_tensor(img), self.scale, self.tile, self.overlap))
            if img.size == before:
                break
        return lanczos_upscale(img, width, height) if img.size != (width, height) else img


def open_input_image(path: str | os.PathLike[str]) -> Image.Image:
    """An image to upscale, or a clear error for a missing/non-image file."""
    p = Path(path)
    if not p.is_file():
        raise SamplingError(f"upscale input {p}: no such file")
    try:
        with Image.open(p) as im:
            im.load()
            return im.convert("RGB")
    except Exception as exc:  # noqa: BLE001
        raise SamplingError(f"upscale input {p}: not an image PIL can read ({type(exc).__name__})") from None
