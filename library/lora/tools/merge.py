"""`lorasmith lora merge --lora A[:w] --lora B[:w] [--new_rank N] -o OUT`: several LoRAs into one LoRA.

Without --new_rank the modules are concatenated along the rank (exact): a module
with factors (up_i, down_i, scale_i) in LoRA i at weight w_i becomes
up = [c_1 up_1 | c_2 up_2 | ...], down = [d_1 down_1; d_2 down_2; ...] with
c_i d_i = w_i scale_i and alpha = total rank, so up @ down = sum_i w_i scale_i up_i down_i.
With --new_rank it is sd-scripts' svd_merge_lora.py: the weighted deltas are summed
and truncated by SVD to the new rank (k x k convolutions to --new_conv_rank), the
factors clamped at --clamp_quantile (0.99 as sd-scripts), alpha = rank.
LoRAs for different architectures (a module whose shape differs, a different
`ss_base_model_version`, or names of different families: SDXL's `lora_te1_`/`lora_te2_` and
SGM UNet names vs SD1.x/SD2.x's) are refused by name.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from library.errors import LoRAFileError
from library.lora import keys
from library.lora.file import resolve_dtype, save_lora
from library.lora.tools import delta, svd
from library.lora.tools.lora_reader import LoRASource, is_conv3x3, lora_family
from library.lora.tools.output import Progress, check_output, provenance, rank_problems


@dataclass(frozen=True)
class LoRAWeight:
    path: str
    weight: float = 1.0


def parse_lora_spec(spec: str) -> LoRAWeight:
    """`FILE[:WEIGHT]` -> LoRAWeight; a Windows drive letter (`C:\\x.safetensors`) is not a weight."""
    path, sep, tail = spec.rpartition(":")
    if sep and path and not tail.startswith(("\\", "/")):
        try:
            return LoRAWeight(path, float(tail))
        except ValueError:
            if Path(spec).exists():
                return LoRAWeight(spec)
            raise LoRAFileError(f"--lora {spec!r}: {tail!r} after the last ':' is not a weight",
                                ["write FILE or FILE:WEIGHT, e.g. style.safetensors:0.7"]) from None
    return LoRAWeight(spec)


def check_same_base(sources: Sequence[LoRASource]) -> None:
    """Refuse LoRAs whose metadata name different base-model versions (sd_v1 vs sd_v2...)."""
    versions = {s.label: s.metadata.get("ss_base_model_version") for s in sources}
    known = {v for v in versions.values() if v}
    if len(known) > 1:
        raise LoRAFileError("these LoRAs were made for different base models; they cannot be merged",
                            [f"{label}: ss_base_model_version {v}" for label, v in versions.items()])


def check_same_family(sources: Sequence[LoRASource]) -> None:
    """Refuse LoRAs whose names belong to different families (SDXL's te1/te2 and SGM names vs SD1/SD2's),
    even when their metadata says nothing."""
    families = {s.label: lora_family(s) for s in sources}
    found = set(families.values())
    definite = found - {"SD1.x/SD2.x"}
    if len(definite) > 1 or ("SDXL" in definite and "SD1.x/SD2.x" in found):
        raise LoRAFileError("these LoRAs were made for different model families; they cannot be merged",
                            [f"{label}: {family} names" for label, family in families.items()])


def collect_modules(sources: Sequence[LoRASource]) -> dict[str, list[int]]:
    """Module name -> indexes of the sources holding it, in first-seen order."""
    found: dict[str, list[int]] = {}
    for i, src in enumerate(sources):
        for name in src.modules():
            found.setdefault(name, []).append(i)
    return found


def _shape_conflict(name: str, shapes: dict[str, tuple[int, ...]]) -> None:
    if len(set(shapes.values())) > 1:
        raise LoRAFileError(f"module {name} has different layer shapes in these LoRAs; they were made for "
                            "different architectures", [f"{label}: {list(s)}" for label, s in shapes.items()])


def concat_module(name: str, items: Sequence[tuple[dict[str, torch.Tensor], float, str]]) -> dict[str, torch.Tensor]:
    """Exact concatenation of standard LoRA modules along the rank (alpha = total rank, scale 1)."""
    ups, downs, shapes = [], [], {}
    for parts, weight, label in items:
        factors = delta.module_factors(parts, f"{label}: {name}")
        if factors is None:
            raise LoRAFileError(f"{label}: {name} is a {delta.format_of(parts).name} module; concatenation needs "
                                "standard LoRA modules", ["give --new_rank to SVD-merge instead"])
        up, down, scale = factors
        c = weight * scale
        ups.append(up * (math.copysign(math.sqrt(abs(c)), c)))
        downs.append(down * math.sqrt(abs(c)))
        shapes[label] = (up.shape[0], *parts[keys.DOWN].shape[1:])
    _shape_conflict(name, shapes)
    shape = next(iter(shapes.values()))
    up, down = torch.cat(ups, dim=1), torch.cat(downs, dim=0)
    rank = down.shape[0]
    if len(shape) == 4:
        up, down = up.reshape(shape[0], rank, 1, 1), down.reshape(rank, *shape[1:])
    return {keys.DOWN: down, keys.UP: up, keys.ALPHA: torch.tensor(float(rank))}


def svd_merge_module(name: str, items: Sequence[tuple[dict[str, torch.Tensor], float, str]], new_rank: int,
                     new_conv_rank: int, clamp_quantile: float | None, device: str | None) -> dict[str, torch.Tensor]:
    """sd-scripts svd_merge_lora: sum of weighted deltas, truncated to the new rank, clamped, alpha = rank."""
    total, shapes = None, {}
    for parts, weight, label in items:
        d = delta.module_delta(parts, f"{label}: {name}").to(device or "cpu")
        shapes[label] = tuple(d.shape)
        _shape_conflict(name, shapes)
        total = d * weight if total is None else total + d * weight
    shape = tuple(total.shape)
    rank = new_conv_rank if is_conv3x3(shape) else new_rank
    matrix = svd.as_matrix(total)
    rank = min(rank, *matrix.shape)
    up, down = svd.truncate(*svd.svd(matrix), rank)
    up, down = svd.clamp_factors(up, down, clamp_quantile)
    if len(shape) == 4:
        up, down = up.reshape(shape[0], rank, 1, 1), down.reshape(rank, *shape[1:])
    return {keys.DOWN: down.cpu().contiguous(), keys.UP: up.cpu().contiguous(), keys.ALPHA: torch.tensor(float(rank))}


def merged_metadata(sources: Sequence[LoRASource], dims: set[int], new_rank: int | None,
                    new_conv_rank: int | None) -> dict[str, str]:
    """The first LoRA's ss_*/modelspec fields, with the network fields of the merged file."""
    md = {k: v for k, v in sources[0].metadata.items() if k.startswith(("ss_", "modelspec."))}
    md["ss_network_module"] = "networks.lora"
    if new_rank is not None:  # svd_merge_lora.py writes the requested rank
        md["ss_network_dim"] = str(new_rank)
    else:
        md["ss_network_dim"] = str(dims.pop()) if len(dims) == 1 else "Dynamic"
    md["ss_network_alpha"] = md["ss_network_dim"]
    if new_rank is not None and new_conv_rank is not None:
        md["ss_network_args"] = json.dumps({"conv_dim": str(new_conv_rank), "conv_alpha": str(new_conv_rank)})
    names = ", ".join(Path(s.label).name for s in sources)
    how = f"SVD-merged to rank {new_rank}" if new_rank is not None else "concatenated"
    md["ss_training_comment"] = f"{how} from {names}"
    return md


def merge_loras(loras: Sequence[LoRAWeight], out: str | os.PathLike[str], *, new_rank: int | None = None,
                new_conv_rank: int | None = None, clamp_quantile: float | None = 0.99,
                save_precision: str | None = None, device: str | None = None, overwrite: bool = False,
                progress: Progress | None = None, command: Sequence[str] | None = None) -> Path:
    """Merge LoRAs into one file: concatenation (exact) without new_rank, SVD merge with it."""
    if len(loras) < 1:
        raise LoRAFileError("no LoRA to merge", ["give --lora FILE[:WEIGHT] at least once"])
    problems = rank_problems(new_rank=new_rank, new_conv_rank=new_conv_rank)
    if problems:
        raise LoRAFileError("merge options are not usable", problems)
    out_path = check_output(out, [lo.path for lo in loras], overwrite=overwrite, error=LoRAFileError)
    conv_rank = new_conv_rank if new_conv_rank is not None else new_rank
    tensors: dict[str, torch.Tensor] = {}
    with ExitStack() as stack, torch.no_grad():
        sources = [stack.enter_context(LoRASource(lo.path)) for lo in loras]
        check_same_base(sources)
        check_same_family(sources)
        modules = collect_modules(sources)
        for n, (name, holders) in enumerate(modules.items()):
            items = [(sources[i].parts(name), loras[i].weight, sources[i].label) for i in holders]
            if new_rank is None:
                merged = concat_module(name, items)
            else:
                merged = svd_merge_module(name, items, new_rank, conv_rank, clamp_quantile, device)
            tensors.update({f"{name}.{s}": t for s, t in merged.items()})
            if progress is not None:
                progress(n + 1, len(modules), name)
        dims = {int(t.shape[0]) for k, t in tensors.items() if k.endswith(keys.DOWN)}
        md = merged_metadata(sources, dims, new_rank, conv_rank)
    options = {"new_rank": new_rank, "new_conv_rank": new_conv_rank, "clamp_quantile": clamp_quantile,
               "save_precision": save_precision, "weights": [lo.weight for lo in loras]}
    md.update(provenance("merge", {"loras": [lo.path for lo in loras]}, options, command))
    save_lora(tensors, out_path, resolve_dtype(save_precision) or torch.float32, md)
    return out_path
