"""What every toolbox command does with its output: guard it, label it, write it atomically.

- `check_output`: never overwrite an input; refuse an existing output without `overwrite`.
- `provenance`: the `lorasmith_tool` metadata field (tool, command, options, SHA-256 of each input).
- `write_safetensors_streaming`: a `.safetensors` file written tensor by tensor from a
  producer function, so a merged checkpoint never exists twice in memory. The format
  (8-byte header length, JSON header with dtype/shape/offsets, raw little-endian data)
  is the public safetensors specification.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from library.errors import LorasmithError
from library.fileio import atomic_path
from library.models.builtin import BUILTIN_MODELS
from library.models.hashing import file_sha256

PROVENANCE_KEY = "lorasmith_tool"
_ST_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}

Progress = Callable[[int, int, str], None]  # (done, total, what)


def rank_problems(**ranks: int | None) -> list[str]:
    """One line per rank option below 1 (None means 'not given' and is fine)."""
    return [f"--{flag} {value}: give a rank of 1 or more" for flag, value in ranks.items()
            if value is not None and value < 1]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(out: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], *, overwrite: bool,
                 error: type[LorasmithError] = LorasmithError) -> Path:
    """Refuse OUT when it is one of the inputs (or inside an input folder), or exists without `overwrite`."""
    out_path = Path(out).expanduser()
    for item in inputs:
        src = Path(str(item)).expanduser()
        if str(item) in BUILTIN_MODELS and not src.exists():
            continue
        inside = src.is_dir() and out_path.resolve().is_relative_to(src.resolve())
        if out_path.resolve() == src.resolve() or _same_file(out_path, src) or inside:
            raise error(f"output {out_path} is the input {src}; the toolbox never overwrites its input",
                        ["choose another output name"])
    if out_path.exists() and not overwrite:
        raise error(f"output {out_path} already exists", ["choose another name, or pass --overwrite to replace it"])
    return out_path


def input_hash(source: str | os.PathLike[str]) -> str:
    """SHA-256 of an input file; of each weight file for a folder; the built-in's name otherwise."""
    path = Path(str(source)).expanduser()
    if str(source) in BUILTIN_MODELS and not path.exists():
        return f"builtin:{source}"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin") and p.is_file())
        return ";".join(f"{p.relative_to(path)}={file_sha256(p)}" for p in files)
    return file_sha256(path) if path.is_file() else "missing"


def provenance(tool: str, inputs: Mapping[str, Any], options: Mapping[str, Any],
               command: Sequence[str] | None = None) -> dict[str, str]:
    """{'lorasmith_tool': JSON} recording what made the file, from what (with hashes), how and when."""
    def describe(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [describe(v) for v in value]
        return {"source": str(value), "sha256": input_hash(value)}

    record = {
        "tool": tool,
        "inputs": {k: describe(v) for k, v in inputs.items()},
        "options": {k: v for k, v in options.items()},
        "command": list(command) if command is not None else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return {PROVENANCE_KEY: json.dumps(record, default=str, sort_keys=True)}


def write_safetensors_streaming(
    path: str | os.PathLike[str],
    specs: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write `specs` (name, dtype, shape) to a .safetensors file, asking `produce(name)` for each tensor in turn.

    The header is written first from the specs, then each tensor's bytes; only one
    tensor is in memory at a time. Atomic: the file appears only once complete.
    """
    header: dict[str, Any] = {}
    offset = 0
    for name, dtype, shape in specs:
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        for i, (name, dtype, shape) in enumerate(specs):
            tensor = produce(name).to(dtype).contiguous()
            if tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{name}: produced shape {tuple(tensor.shape)}, header says {tuple(shape)}")
            fh.write(tensor.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no extra copy
            if progress is not None:
                progress(i + 1, len(specs), name)
    return Path(path)
