"""Reading, checking, hashing and writing LoRA files.

A `.safetensors` file is an 8-byte little-endian header length, a JSON header
(tensor dtypes, shapes, byte offsets and a `__metadata__` dict of strings), then the
tensor data. The header is checked (library.safetensors_header, shared with base
models and training states) before safetensors reads it, so a truncated, corrupt
or hostile file gets a LoRAFileError naming the problem instead of a traceback.

Hashes as sd-scripts writes them (read by sd-webui-additional-networks and A1111):
- `sshs_model_hash`: SHA-256 of the tensor-data region (everything after the header);
- `sshs_legacy_hash`: first 8 hex digits of SHA-256 of the 64 KiB at offset 1 MiB of
  the file serialised with only its `ss_*` metadata (empty input for files < 1 MiB).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

from library import safetensors_header
from library.errors import LoRAFileError
from library.fileio import atomic_path
from library.lora import keys
from library.safetensors_header import SafetensorsHeader

SAVE_DTYPES = {
    "fp32": torch.float32, "float": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and check a LoRA file's safetensors header (library.safetensors_header) without reading tensor data."""
    return safetensors_header.read_header(path, LoRAFileError, "LoRA file")


def data_region_sha256(path: str | os.PathLike[str]) -> str:
    """sshs_model_hash of a file on disk: SHA-256 of everything after the header."""
    header = read_header(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(header.data_start)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def precalculate_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) as sd-scripts computes them before saving."""
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    blob = safetensors.torch.save(dict(tensors), ss_only)
    n = int.from_bytes(blob[:8], "little")
    model_hash = hashlib.sha256(blob[8 + n:]).hexdigest()
    legacy_hash = hashlib.sha256(blob[0x100000:0x100000 + 0x10000]).hexdigest()[:8]
    return model_hash, legacy_hash


def save_lora(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    dtype: torch.dtype | str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a Kohya LoRA `.safetensors` atomically, with sshs hashes added to the metadata."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise LoRAFileError(f"{path}: LoRA files are written as .safetensors; choose a name ending in .safetensors")
    target_dtype = resolve_dtype(dtype)
    out = {}
    for key, value in tensors.items():
        value = value.detach().to("cpu")
        out[key] = (value.to(target_dtype) if target_dtype is not None else value).contiguous()
    meta = {str(k): _as_str(k, v) for k, v in (metadata or {}).items()}
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = precalculate_hashes(out, meta)
    # Bytes written by us, not save_file: safetensors' own writer leaves a `.tmpXXXXXX` beside the
    # file when killed, a name nobody can tell apart from a user's (see training/lock.py).
    blob = safetensors.torch.save(out, metadata=meta)
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    return path


def _as_str(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise LoRAFileError(f"metadata field {key!r} is {type(value).__name__}, but safetensors metadata must be strings")
    return value


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """'fp16'/'bf16'/'fp32' (sd-scripts' --save_precision spelling) or a torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return SAVE_DTYPES[str(dtype).lower()]
    except KeyError:
        raise LoRAFileError(f"save precision {dtype!r} is not one of fp32, fp16, bf16") from None


def read_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a LoRA file, after the header checks; never unpickles code."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        header = read_header(path)
        try:
            tensors = safetensors.torch.load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise LoRAFileError(f"{path}: safetensors could not read the tensors ({exc})") from exc
        return tensors, header.metadata
    if not path.is_file():
        raise LoRAFileError(f"{path}: no such LoRA file")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise LoRAFileError(f"{path}: not a readable LoRA file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise LoRAFileError(f"{path}: the file does not hold a flat dict of tensors, so it is not a LoRA")
    return dict(loaded), {}


def structure_problems(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Problems with pairing, ranks and non-finite values (Kohya and LyCORIS layouts)."""
    from library.lora.algorithms.registry import parts_problems

    modules, _ = keys.group_by_module(tensors)
    problems: list[str] = []
    for name, parts in sorted(modules.items()):
        problems += parts_problems(name, parts)
    return problems
