"""A1111 X/Y/Z plot value syntax as pure functions.

- A comma list read as CSV with leading spaces skipped: ``"red, blue", green`` is two values.
- Integer ranges: ``1-5`` (step 1, end included), ``1-10 (+2)``, ``10-1 (-3)``, and
  ``1-10 [5]`` (5 values spread evenly, truncated to integers).
- Float ranges: ``0.5-1.5 (+0.25)``, ``0-1 [5]``.
- Ranges and single values mix freely: ``1, 4-6, 10``.
Unlike A1111 (numpy.arange), float ranges are counted with a tolerance so that
``0.8-1.2 (+0.1)`` ends at 1.2 rather than sometimes reaching 1.3.
"""
from __future__ import annotations

import csv
import re

from library.errors import SamplingError

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
_INT_STEP = re.compile(rf"\s*({_INT})\s*-\s*({_INT})\s*(?:\(\s*([+-]\s*\d+)\s*\))?\s*")
_INT_COUNT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})\s*\[\s*(\d+)\s*\]\s*")
_FLOAT_STEP = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})\s*(?:\(\s*([+-]\s*(?:\d+(?:\.\d*)?|\.\d+))\s*\))?\s*")
_FLOAT_COUNT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})\s*\[\s*(\d+)\s*\]\s*")


def split_csv(text: str) -> list[str]:
    """Values of a comma list, CSV quoting honoured, each stripped; empty items dropped.

    Line breaks separate values like commas (a list pasted one value per line).
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    try:
        rows = [row for line in lines for row in csv.reader([line], skipinitialspace=True)]
    except csv.Error as exc:
        raise SamplingError(f"cannot read the value list {text!r}: {exc}", ["check the quotes: write \"red, blue\", green"]) from None
    return [v.strip() for row in rows for v in row if v.strip()]


def _num(s: str) -> str:
    return s.replace(" ", "")


def int_range(start: int, end: int, step: int = 1) -> list[int]:
    """Inclusive integer range; a step against the direction gives nothing (as in A1111)."""
    if step == 0:
        raise SamplingError(f"range {start}-{end}: step 0 never ends", ["use a step such as (+1)"])
    stop = end + (1 if step > 0 else -1)
    return list(range(start, stop, step))


def spread(start: float, end: float, count: int) -> list[float]:
    """`count` values from start to end inclusive, evenly spaced (numpy.linspace)."""
    if count < 1:
        raise SamplingError(f"range {start}-{end} [{count}]: count must be at least 1")
    if count == 1:
        return [start]
    return [start + (end - start) * i / (count - 1) for i in range(count)]


def float_range(start: float, end: float, step: float = 1.0) -> list[float]:
    """Inclusive float range in steps; tolerant of rounding so the end value is neither lost nor overshot."""
    if step == 0:
        raise SamplingError(f"range {start}-{end}: step 0 never ends", ["use a step such as (+0.1)"])
    n = int((end - start) / step + 1e-9) + 1
    return [round(start + i * step, 10) for i in range(max(n, 0))]


def parse_int_values(text: str, *, field: str = "values") -> list[int]:
    """Integer axis values with ranges expanded."""
    out: list[int] = []
    for item in split_csv(text):
        if m := _INT_STEP.fullmatch(item):
            out += int_range(int(_num(m[1])), int(_num(m[2])), int(_num(m[3])) if m[3] else 1)
        elif m := _INT_COUNT.fullmatch(item):
            out += [int(v) for v in spread(int(_num(m[1])), int(_num(m[2])), int(m[3]))]
        else:
            out.append(_to_number(item, int, field))
    return out


def parse_float_values(text: str, *, field: str = "values") -> list[float]:
    """Float axis values with ranges expanded."""
    out: list[float] = []
    for item in split_csv(text):
        if m := _FLOAT_STEP.fullmatch(item):
            out += float_range(float(_num(m[1])), float(_num(m[2])), float(_num(m[3])) if m[3] else 1.0)
        elif m := _FLOAT_COUNT.fullmatch(item):
            out += [round(v, 10) for v in spread(float(_num(m[1])), float(_num(m[2])), int(m[3]))]
        else:
            out.append(_to_number(item, float, field))
    return out


def _to_number(item: str, kind: type, field: str) -> int | float:
    try:
        return kind(item)
    except ValueError:
        example = "1, 2, 5-8, 10-20 (+5), 1-10 [4]" if kind is int else "0.5, 0.5-1.5 (+0.25), 0-1 [5]"
        raise SamplingError(f"{field}: {item!r} is not {'a whole number' if kind is int else 'a number'} "
                            "or a range", [f"examples: {example}"]) from None


def parse_size(item: str, *, field: str = "Size") -> tuple[int, int]:
    """`512x768` → (512, 768); both multiples of 8."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", item)
    if not m:
        raise SamplingError(f"{field}: {item!r} is not a size", ["write sizes as WIDTHxHEIGHT, e.g. 512x768"])
    w, h = int(m[1]), int(m[2])
    if w % 8 or h % 8 or w <= 0 or h <= 0:
        raise SamplingError(f"{field}: {item} is not a multiple of 8 in both directions",
                            [f"try {max(8, w // 8 * 8)}x{max(8, h // 8 * 8)}"])
    return w, h
