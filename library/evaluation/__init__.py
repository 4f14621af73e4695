"""X/Y/Z comparison grids: axis types, A1111 value syntax, labelled grid rendering.

Public API:
    parse_axes(base: CellSettings, [(type, values) for X, Y, Z], lora_dir) -> list[Axis | None]
    run_grid(base, axes, output_dir, load_bundle=..., max_batch=4, margin=0, max_megapixels=200) -> GridResult
    parse_int_values / parse_float_values / split_csv        # the value syntax, pure
"""
from library.evaluation.axes import AXIS_TYPES, CellSettings, expand_lora_files
from library.evaluation.grid import Axis, GridResult, parse_axes, plan_cells, run_grid
from library.evaluation.values import (
    parse_float_values,
    parse_int_values,
    parse_size,
    split_csv,
)

__all__ = [
    "AXIS_TYPES", "Axis", "CellSettings", "GridResult", "expand_lora_files", "parse_axes", "parse_float_values",
    "parse_int_values", "parse_size", "plan_cells", "run_grid", "split_csv",
]
