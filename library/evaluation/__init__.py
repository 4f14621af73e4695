"""X/Y/Z comparison grids: axis types, A1111 value syntax, labelled grid rendering.

Public API:
    parse_axes(base: CellSettings, [(type, values) for X, Y, Z], lora_dir) -> list[Axis | None]
    run_grid(base, axes, output_dir, load_bundle=..., max_batch=4, margin=0, max_megapixels=200) -> GridResult
    parse_int_values / parse_float_values / split_csv        # the value syntax, pure

Names are imported on first use (library.lazy), so registering a command loads no torch.
"""
from __future__ import annotations

from library.lazy import lazy_exports

_EXPORTS = {
    "AXIS_TYPES": "axes", "CellSettings": "axes", "expand_lora_files": "axes", "Axis": "grid",
    "GridResult": "grid", "parse_axes": "grid", "plan_cells": "grid", "run_grid": "grid",
    "parse_float_values": "values", "parse_int_values": "values", "parse_size": "values",
    "split_csv": "values",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
