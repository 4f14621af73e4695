"""Reading weight files without ever running code from them.

`.safetensors` is plain data. `.ckpt`/`.pt`/`.bin` files are Python pickles,
which can carry arbitrary callables that run on load; we only read them with
`torch.load(weights_only=True)`, whose restricted unpickler accepts tensors and
plain containers and refuses everything else before it executes.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open

from library.errors import ModelLoadError
from library.safetensors_header import read_header

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one weight file, keyed by name, on the CPU."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}", [
            "check the path (and that the download finished)",
        ])
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise ModelLoadError(
        f"{path}: unsupported weight file type {suffix or '(no suffix)'!r}",
        ["use a .safetensors file (preferred), a .ckpt/.pt file, or a diffusers folder"],
    )


_ALIGNMENT = 64


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """A copy in fresh memory if `tensor` is not 64-byte aligned.

    Tensors read from a .safetensors file can sit at arbitrary offsets of one
    buffer; CPU kernels take different (vectorised) code paths on unaligned
    memory and round differently, which would make results depend on the file's
    byte layout instead of on the weights alone.
    """
    return tensor.clone() if tensor.data_ptr() % _ALIGNMENT else tensor


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    read_header(path, ModelLoadError, "model file")  # the shared header check: one named error for any damage
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {key: _aligned(fh.get_tensor(key)) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{path} is not a readable .safetensors file ({exc})",
            ["the file is probably truncated or damaged: download it again and compare its size"],
        ) from exc


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"refusing to load {path}: it contains pickled Python objects that would run code when loaded",
            [
                "only plain tensors are accepted from .ckpt/.pt files (torch.load with weights_only=True)",
                f"detail: {str(exc).splitlines()[0]}" if str(exc) else "detail: restricted unpickler refused it",
                "get a .safetensors version of this model from its publisher, which cannot contain code",
            ],
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{path} is not a readable checkpoint ({exc})",
            ["the file is probably truncated or damaged: download it again"],
        ) from exc
    return _tensors_only(path, data)


def _tensors_only(path: Path, data: object) -> dict[str, torch.Tensor]:
    """LDM `.ckpt` files wrap their weights in {"state_dict": {...}, "global_step": ...}."""
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} holds a {type(data).__name__}, not a dictionary of weights")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"{path} contains no tensors", ["is this really a model checkpoint?"])
    return tensors
