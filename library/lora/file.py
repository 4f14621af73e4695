"""Reading, checking, hashing and writing LoRA files.

A `.safetensors` file is an 8-byte little-endian header length, a JSON header
(tensor dtypes, shapes, byte offsets and a `__metadata__` dict of strings), then the
tensor data. We check the header against the file size before handing it to
safetensors, so a truncated or corrupt file gets a LoRAFileError naming the
problem instead of a traceback.

Hashes as sd-scripts writes them (read by sd-webui-additional-networks and A1111):
- `sshs_model_hash`: SHA-256 of the tensor-data region (everything after the header);
- `sshs_legacy_hash`: first 8 hex digits of SHA-256 of the 64 KiB at offset 1 MiB of
  the file serialised with only its `ss_*` metadata (empty input for files < 1 MiB).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from library.errors import LoRAFileError
from library.fileio import atomic_path
from library.lora import keys

MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
}
SAVE_DTYPES = {
    "fp32": torch.float32, "float": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


@dataclass
class SafetensorsHeader:
    header_len: int
    entries: dict[str, dict]
    metadata: dict[str, str]
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and sanity-check a safetensors header without reading tensor data."""
    path = Path(path)
    if not path.is_file():
        raise LoRAFileError(f"{path}: no such LoRA file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        first = fh.read(8)
        if len(first) < 8:
            raise LoRAFileError(f"{path}: file is {size} bytes, too short for a safetensors header (truncated?)")
        n = int.from_bytes(first, "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise LoRAFileError(
                f"{path}: header length field says {n} bytes but the file has only {size - 8} bytes after it; "
                "the file is truncated or not a safetensors file"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoRAFileError(f"{path}: the safetensors header is not valid JSON ({exc}); the file is damaged") from exc
    if not isinstance(header, dict):
        raise LoRAFileError(f"{path}: the safetensors header is not a JSON object; the file is damaged")
    metadata = header.pop("__metadata__", None) or {}
    result = SafetensorsHeader(n, header, {str(k): str(v) for k, v in metadata.items()}, size)
    problems = _check_entries(result)
    if problems:
        raise LoRAFileError(f"{path}: the safetensors header does not match the file", problems)
    return result


def _check_entries(header: SafetensorsHeader) -> list[str]:
    problems: list[str] = []
    data_len = header.file_size - header.data_start
    end_max = 0
    for name, entry in header.entries.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            problems.append(f"{name}: header entry lacks dtype/shape/data_offsets")
            continue
        numel = 1
        for dim in shape:
            numel *= int(dim)
        width = _DTYPE_BYTES.get(dtype)
        if width is not None and end - begin != numel * width:
            problems.append(f"{name}: {end - begin} bytes stored for shape {shape} {dtype} ({numel * width} expected)")
        end_max = max(end_max, end)
    if end_max > data_len:
        problems.append(f"tensor data needs {end_max} bytes but the file holds {data_len} (truncated)")
    return problems


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
    """Problems with down/up/alpha pairing, ranks and non-finite values (Kohya layout)."""
    modules, _ = keys.group_by_module(tensors)
    problems: list[str] = []
    for name, parts in sorted(modules.items()):
        down, up, alpha = parts.get(keys.DOWN), parts.get(keys.UP), parts.get(keys.ALPHA)
        if down is None or up is None:
            missing = keys.DOWN if down is None else keys.UP
            problems.append(f"{name}: has no {missing}")
            continue
        if down.dim() not in (2, 4) or up.dim() != down.dim():
            problems.append(f"{name}: down {tuple(down.shape)} and up {tuple(up.shape)} are not a LoRA pair")
        elif down.shape[0] != up.shape[1]:
            problems.append(f"{name}: rank mismatch, lora_down has rank {down.shape[0]} but lora_up has {up.shape[1]}")
        if alpha is not None and alpha.numel() != 1:
            problems.append(f"{name}: alpha has shape {tuple(alpha.shape)}, expected a single number")
        bad = [s for s, t in parts.items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            problems.append(f"{name}: non-finite values (NaN/inf) in {', '.join(sorted(bad))}")
    return problems
