"""The one check every `.safetensors` file we open goes through before its tensors are read.

A `.safetensors` file is an 8-byte little-endian header length, a JSON header
(per tensor: `dtype`, `shape`, `data_offsets`; plus an optional `__metadata__`
object of strings), then the tensor data. A damaged or hostile header (a shape
that is a number, offsets that are strings, metadata that is a list, JSON nested
200,000 deep, a length field larger than the file) gets one error naming the
file and what is wrong, instead of a traceback from deep inside a parser. The
same function serves LoRA files (`inspect`, `verify`, `--network_weights`,
`<lora:…>`), base models and training states; each caller picks its error type.
"""
from __future__ import annotations

import json
import re
import os
from dataclasses import dataclass
from pathlib import Path

from library.errors import LorasmithError

MAX_HEADER_BYTES = 100 * 1024 * 1024
# Bytes per element of the dtypes the safetensors format defines (sub-byte F4/F6 are not read by torch).
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
    "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}
_MAX_SHOWN = 10


@dataclass
class SafetensorsHeader:
    header_len: int
    entries: dict[str, dict]
    metadata: dict[str, str]
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def read_header(path: str | os.PathLike[str], error: type[LorasmithError] = LorasmithError,
                what: str = "safetensors file") -> SafetensorsHeader:
    """Parse and check a header without reading tensor data; `error` (naming the file) on any problem."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        first = fh.read(8)
        if len(first) < 8:
            raise error(f"{path}: file is {size} bytes, too short for a safetensors header (truncated?)")
        n = int.from_bytes(first, "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise error(f"{path}: header length field says {n} bytes but the file has only {size - 8} bytes after it; "
                        "the file is truncated or not a safetensors file")
        raw = fh.read(n)
    header = _parse_json(path, raw, error)
    metadata = header.pop("__metadata__", None)
    problems = _metadata_problems(metadata)
    result = SafetensorsHeader(n, header, dict(metadata or {}) if not problems else {}, size)
    problems += entry_problems(result)
    if problems:
        shown = problems[:_MAX_SHOWN] + ([f"... and {len(problems) - _MAX_SHOWN} more"] if len(problems) > _MAX_SHOWN else [])
        raise error(f"{path}: the safetensors header is damaged or not a safetensors header", shown)
    return result


# A real header nests 3 deep ({name: {shape: [...]}}); far deeper JSON is only made to crash parsers.
_MAX_NESTING = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_nesting(raw: bytes) -> int:
    """How deep `[`/`{` nest in JSON text, strings skipped, without parsing it (no recursion at any depth)."""
    import numpy as np

    codes = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    steps = np.isin(codes, (91, 123)).astype(np.int64) - np.isin(codes, (93, 125))
    return int(np.cumsum(steps).max(initial=0))


def _parse_json(path: Path, raw: bytes, error: type[LorasmithError]) -> dict:
    # Checked before json.loads: a RecursionError raised deep inside the parser is caught here, but the
    # exception and its 100,000-frame traceback can outlive the call and crash whoever prints it later.
    if json_nesting(raw) > _MAX_NESTING:
        raise error(f"{path}: the safetensors header nests JSON too deeply to be a safetensors header",
                    ["the file is damaged or was made to crash readers; do not use it"])
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: the safetensors header is not valid JSON ({exc}); the file is damaged") from None
    except RecursionError:
        raise error(f"{path}: the safetensors header nests JSON too deeply to be a safetensors header",
                    ["the file is damaged or was made to crash readers; do not use it"]) from None
    if not isinstance(header, dict):
        raise error(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object; "
                    "the file is damaged")
    return header


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _metadata_problems(metadata: object) -> list[str]:
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return [f"__metadata__ is a JSON {type(metadata).__name__}; it must be an object of strings"]
    bad = [k for k, v in metadata.items() if not isinstance(v, str)]
    return [f"__metadata__[{k!r}] is a {type(metadata[k]).__name__}; metadata values must be strings" for k in bad]


def entry_problems(header: SafetensorsHeader) -> list[str]:
    """One line per tensor entry whose dtype/shape/data_offsets are malformed or do not fit the file."""
    problems: list[str] = []
    data_len = header.file_size - header.data_start
    for name, entry in header.entries.items():
        problem = _entry_problem(entry)
        if problem is None:
            begin, end = entry["data_offsets"]
            numel = 1
            for dim in entry["shape"]:
                numel *= dim
            expected = numel * DTYPE_BYTES[entry["dtype"]]
            if end - begin != expected:
                problem = f"{end - begin} bytes stored for shape {entry['shape']} {entry['dtype']} ({expected} expected)"
            elif end > data_len:
                problem = f"data ends at byte {end} but the file holds {data_len} bytes of data (truncated)"
        if problem is not None:
            problems.append(f"{name[:80]}: {problem}")
    return problems


def _entry_problem(entry: object) -> str | None:
    """What is wrong with one entry's types, or None."""
    if not isinstance(entry, dict):
        return f"entry is a JSON {type(entry).__name__}, not an object with dtype/shape/data_offsets"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        return f"dtype {str(dtype)[:40]!r} is not a safetensors dtype ({', '.join(DTYPE_BYTES)})"
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return f"shape {str(shape)[:60]} is not a list of non-negative whole numbers"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) \
            or offsets[0] > offsets[1]:
        return f"data_offsets {str(offsets)[:60]} is not [begin, end] with 0 <= begin <= end"
    return None
