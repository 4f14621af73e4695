"""X/Y/Z grids: plan every cell, refuse oversize grids up front, run cells in the cheapest order.

Order of work: the axis that is costliest to switch (checkpoint, then LoRA file) is the
outermost loop, so each model loads once and each LoRA file is applied once; cells that
differ only in seed or prompt are generated as one batch. Cells are saved as ordinary
images (with their own parameters), then one labelled grid per Z value and the combined
grid are written, the grid's `parameters` recording the axes. With an init image in the
base settings every cell is img2img from that image (the Denoising axis needs one).
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from library.errors import SamplingError
from library.evaluation.axes import AxisType, CellSettings, axis_type
from library.evaluation.render import (
    annotate_cell,
    check_size,
    combine_horizontally,
    combined_size,
    draw_grid,
    font_size_for,
    grid_layout,
)
from library.sampling.infotext import next_image_path, save_png
from library.sampling.pipeline import (
    GeneratedImage,
    ImageJob,
    SamplingSession,
    plan_jobs,
    validate_request,
)

AXIS_NAMES = ("X", "Y", "Z")


@dataclass(frozen=True)
class Axis:
    """A parsed axis: its type, the values, and the text they came from (for the grid's parameters)."""

    type: AxisType
    values: tuple
    text: str

    @property
    def labels(self) -> list[str]:
        return [self.type.label(v) for v in self.values]


@dataclass
class Cell:
    index: tuple[int, int, int]  # (x, y, z)
    settings: CellSettings
    job: ImageJob


@dataclass
class GridResult:
    grid_path: Path
    sub_grid_paths: list[Path]
    cell_paths: list[Path]
    images: dict[tuple[int, int, int], GeneratedImage] = field(repr=False)


def parse_axes(base: CellSettings, specs: Sequence[tuple[str | None, str | None]], lora_dir: str | None) -> list[Axis | None]:
    """[(type name, values text)] for X, Y, Z → parsed axes (None where unused); all problems at once."""
    axes: list[Axis | None] = []
    problems = []
    for name, (type_name, text) in zip(AXIS_NAMES, specs):
        if not type_name:
            axes.append(None)
            continue
        try:
            kind = axis_type(type_name)
            values = kind.parse(text or "", base, lora_dir)
            if not values:
                raise SamplingError(f"no values given (--{name.lower()}_values)")
            axes.append(Axis(kind, tuple(values), text or ""))
        except SamplingError as exc:
            hint = f" ({'; '.join(exc.problems)})" if exc.problems else ""
            problems.append(f"{name} axis ({type_name}): {exc.summary}{hint}")
            axes.append(None)
    used = [a.type.name for a in axes if a is not None]
    problems += [f"axis type {n!r} is used twice" for n in sorted(set(used)) if used.count(n) > 1]
    if "LoRA weight" in used and "LoRA" not in used and base.lora_file is None:
        problems.append("a LoRA weight axis needs a LoRA: add --lora FILES or a LoRA axis")
    if problems:
        raise SamplingError("the grid's axes cannot be used", problems)
    return axes


def plan_cells(base: CellSettings, axes: Sequence[Axis | None]) -> list[Cell]:
    """Every cell's settings and image job (seeds fixed, prompts expanded, LoRA tags resolved)."""
    counts = [len(a.values) if a else 1 for a in axes] + [1] * (3 - len(axes))
    if base.request.seed is None or base.request.seed < 0:  # one random seed for the whole grid
        base = dataclasses.replace(base, request=dataclasses.replace(base.request, seed=random.randrange(2**32)))
    cells = []
    for z in range(counts[2]):
        for y in range(counts[1]):
            for x in range(counts[0]):
                settings = base
                for axis, i in zip(axes, (x, y, z)):
                    if axis is not None:
                        settings = axis.type.apply(settings, axis.values[i], list(axis.values))
                request = settings.final_request()
                validate_request(request)
                _seed, jobs = plan_jobs(request)
                cells.append(Cell((x, y, z), settings, jobs[0]))
    return cells


def execution_order(cells: Sequence[Cell], axes: Sequence[Axis | None]) -> list[Cell]:
    """Costliest axis outermost; then group by checkpoint and LoRA set (LoRAs may come from prompt S/R)."""
    by_cost = sorted((i for i, a in enumerate(axes) if a is not None), key=lambda i: -axes[i].type.cost)
    ordered = sorted(cells, key=lambda c: tuple(c.index[i] for i in by_cost))
    first_seen: dict[object, int] = {}
    for c in ordered:
        first_seen.setdefault(("ckpt", model_key(c)), len(first_seen))
        first_seen.setdefault(("lora", model_key(c), c.job.loras), len(first_seen))
    return sorted(ordered, key=lambda c: (first_seen[("ckpt", model_key(c))],
                                          first_seen[("lora", model_key(c), c.job.loras)]))


def model_key(cell: Cell) -> tuple[str, str | None]:
    """What a loaded model is: checkpoint and VAE (a VAE axis reloads like a Checkpoint axis)."""
    return cell.settings.checkpoint, cell.settings.vae


def batch_key(cell: Cell) -> tuple:
    """Cells with equal keys differ at most in seed and prompt, so they can share a batch."""
    r = cell.settings.final_request()
    return (model_key(cell), cell.job.loras, r.steps, r.cfg_scale, r.sampler, r.width, r.height, r.clip_skip,
            r.denoising_strength, id(cell.settings.init_image))


def batches(cells: Sequence[Cell], max_batch: int) -> list[list[Cell]]:
    out: list[list[Cell]] = []
    for cell in cells:
        if out and len(out[-1]) < max_batch and batch_key(out[-1][0]) == batch_key(cell):
            out[-1].append(cell)
        else:
            out.append([cell])
    return out


def layouts_for(cells: Sequence[Cell], axes: Sequence[Axis | None], margin: int):
    """One layout per Z value, sized from the largest cell."""
    cell_w = max(c.settings.request.width for c in cells)
    cell_h = max(c.settings.request.height for c in cells)
    x, y, z = (list(axes) + [None] * 3)[:3]
    cols, rows = (x.labels if x else []), (y.labels if y else [])
    titles = z.labels if z else [""]
    return [grid_layout(cell_w, cell_h, cols, rows, title, margin) for title in titles]


def grid_parameters(first: GeneratedImage, axes: Sequence[Axis | None]) -> str:
    """The first cell's parameters plus A1111's X/Y/Z plot fields."""
    extra = ["Script: X/Y/Z plot"]
    for name, axis in zip(AXIS_NAMES, axes):
        if axis is not None:
            values = ", ".join(str(v) for v in axis.labels) if axis.type.name in ("LoRA",) else axis.text
            extra += [f"{name} Type: {axis.type.name}", f'{name} Values: "{values}"']
    return first.parameters + ", " + ", ".join(extra)


def run_grid(base: CellSettings, axes: Sequence[Axis | None], output_dir: str | Path, *,
             load_bundle: Callable[[str], object], max_batch: int = 4, margin: int = 0,
             max_megapixels: float = 200.0, progress: bool = True, save_cells: bool = True,
             cell_note: Callable[[CellSettings], tuple[str | None, bool]] | None = None) -> GridResult:
    """Generate every cell and write the grids; refuses an oversize grid before loading anything.

    `cell_note(settings) -> (text, marked)` writes a note into each cell of the grid (not into the
    cell PNGs) and frames the marked ones: epoch scores and the recommended cell.
    """
    cells = plan_cells(base, axes)
    layouts = layouts_for(cells, axes, margin)
    gap = max(margin, font_size_for(layouts[0].cell_w, layouts[0].cell_h))
    check_size(*combined_size(layouts, gap), max_megapixels)
    images = _generate_cells(cells, axes, load_bundle, max_batch, progress)
    return _write_outputs(cells, axes, images, layouts, gap, Path(output_dir), save_cells, cell_note)


def _generate_cells(cells: Sequence[Cell], axes: Sequence[Axis | None], load_bundle: Callable[[str], object],
                    max_batch: int, progress: bool) -> dict[tuple[int, int, int], GeneratedImage]:
    from tqdm import tqdm

    images: dict[tuple[int, int, int], GeneratedImage] = {}
    session: SamplingSession | None = None
    checkpoint = None
    with tqdm(total=len(cells), desc="grid", unit="cell", disable=not progress) as bar:
        try:
            for group in batches(execution_order(cells, axes), max_batch):
                if session is None or model_key(group[0]) != checkpoint:
                    if session is not None:
                        session.loras.clear()
                    checkpoint = model_key(group[0])
                    name, vae = checkpoint
                    session = SamplingSession(load_bundle(name) if vae is None else load_bundle(name, vae))
                request = group[0].settings.final_request()
                init = group[0].settings.init_image
                made = session.run_jobs(request, [c.job for c in group], max_batch=max_batch,
                                        init_images=[init] * len(group) if init is not None else None)
                images.update({c.index: img for c, img in zip(group, made)})
                bar.update(len(group))
        finally:
            if session is not None:
                session.loras.clear()
    return images


def _write_outputs(cells: Sequence[Cell], axes: Sequence[Axis | None], images: dict, layouts, gap: int,
                   output_dir: Path, save_cells: bool,
                   cell_note: Callable[[CellSettings], tuple[str | None, bool]] | None = None) -> GridResult:
    cell_paths = []
    if save_cells:
        for cell in cells:
            img = images[cell.index]
            cell_paths.append(save_png(img.image, next_image_path(output_dir / "cells", img.seed), img.parameters))
    counts = [len(a.values) if a else 1 for a in (list(axes) + [None] * 3)[:3]]
    params = grid_parameters(images[cells[0].index], axes)
    grids = []
    settings = {cell.index: cell.settings for cell in cells}

    def shown(index):
        image = images[index].image
        return annotate_cell(image, *cell_note(settings[index])) if cell_note is not None else image

    for z, layout in enumerate(layouts):
        rows = [[shown((x, y, z)) for x in range(counts[0])] for y in range(counts[1])]
        grids.append(draw_grid(layout, rows))
    stem = _next_grid_stem(output_dir)
    sub_paths = []
    if len(grids) > 1:
        sub_paths = [save_png(g, output_dir / f"{stem}-z{z + 1}.png", params) for z, g in enumerate(grids)]
    combined = combine_horizontally(grids, gap) if len(grids) > 1 else grids[0]
    grid_path = save_png(combined, output_dir / f"{stem}.png", params)
    return GridResult(grid_path, sub_paths, cell_paths, images)


def _next_grid_stem(folder: Path) -> str:
    n = 0
    while (folder / f"xyz_grid-{n:04d}.png").exists():
        n += 1
    return f"xyz_grid-{n:04d}"

