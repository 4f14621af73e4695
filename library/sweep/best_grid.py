"""A grid of each variant's best epoch: one column per ranked variant (its best file at its best weight).

Made with library.evaluation.grid (the X/Y/Z grid), with an X axis whose values are
the variants; every cell uses the same prompt, seed and sampler, so the columns
differ only by the LoRA. The prompt defaults to the training folder's tokens
(`10_ohwx shape` -> "ohwx shape").
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

GRID_STEPS = 20
GRID_SAMPLER = "Euler a"


def default_prompt(cfg: Any) -> str | None:
    """The tokens of the first training folder (`<repeats>_<tokens>`), the usual instance prompt."""
    from library.data.folders import parse_folder_name

    root = Path(cfg.train_data_dir) if cfg.train_data_dir else None
    if root is None or not root.is_dir():
        return None
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        parsed = parse_folder_name(sub.name)
        if parsed and parsed[1].strip():
            return parsed[1].strip()
    return None


def variant_axis(rows: Sequence[Any]):
    """(X axis) one value per ranked variant with a best file: (label, file, weight)."""
    from library.evaluation.axes import AxisType
    from library.evaluation.grid import Axis

    values = tuple((f"{r.rank}. {r.name} e{r.best_epoch if r.best_epoch is not None else '?'} @ {r.best_weight or 1:g}",
                    r.best_file, float(r.best_weight or 1.0)) for r in rows if r.best_file)
    kind = AxisType("Sweep variant", lambda text, base, lora_dir: list(values),
                    lambda s, v, vals: dataclasses.replace(s, lora_file=v[1], lora_weight=v[2]),
                    lambda v: v[0], cost=50)
    return Axis(kind, values, ", ".join(v[0] for v in values))


def best_epoch_grid(rows: Sequence[Any], cfg: Any, out_dir: Path, *, load_bundle: Callable[[str], Any],
                    prompt: str | None = None, seed: int = 0) -> Path | None:
    """Write `<out_dir>/best_grid/xyz_grid-0000.png` (+ cells); None when no variant has a best file or no prompt."""
    from library.config import parse_resolution
    from library.evaluation.axes import CellSettings
    from library.evaluation.grid import run_grid
    from library.sampling.pipeline import SampleRequest

    axis = variant_axis(rows)
    prompt = prompt or default_prompt(cfg)
    if not axis.values or not prompt:
        return None
    width, height = parse_resolution(cfg.resolution)
    request = SampleRequest(prompt=prompt, steps=GRID_STEPS, sampler=GRID_SAMPLER, width=width, height=height,
                            seed=int(seed), clip_skip=cfg.clip_skip or 1)
    base = CellSettings(request, cfg.pretrained_model_name_or_path)
    result = run_grid(base, [axis, None, None], out_dir / "best_grid", load_bundle=load_bundle, progress=False)
    return result.grid_path
