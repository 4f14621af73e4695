"""Weight deltas of one LoRA module, by algorithm, recognised by key suffix.

`module_delta(parts)` is the one function every tool computes a module's change
with: `parts` maps a key suffix (`lora_down.weight`, `lora_up.weight`, `alpha`...)
to the tensor the file holds under `<module>.<suffix>`. The algorithm is picked by
a *marker* suffix only it uses. The plug-in point for other algorithms is
`register_delta_format`: a LoHa module, for instance, registers markers
`("hada_w1_a",)` with its suffixes and a `delta` function, and resize and merge
handle it from then on (merge into a checkpoint and SVD merge exactly; resize
re-factorises it as a standard LoRA; concatenation needs `factors`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from library.errors import LoRAFileError
from library.lora import keys
from library.lora.file import structure_problems
from library.lora.module import delta_weight

Parts = Mapping[str, torch.Tensor]
# (up as [out, r], down as [r, in*k*k], scale): the delta is scale * up @ down.
Factors = tuple[torch.Tensor, torch.Tensor, float]
# delta(parts, weight shape or None, base weight or None) -> float32 delta, alpha scale applied.
DeltaFn = Callable[[Parts, "tuple[int, ...] | None", "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True)
class DeltaFormat:
    """One algorithm's key layout and its delta formula.

    `markers`: suffixes only this algorithm writes; any of them picks the format.
    `delta` gets the layer's weight shape when known (formats that store convolutions
    flat reshape with it) and, for `needs_base` formats (DoRA), the base weight.
    When several formats match (DoRA's `dora_scale` beside `lora_down`), the highest
    `priority` wins.
    """

    name: str
    markers: tuple[str, ...]
    suffixes: tuple[str, ...]  # every suffix a module of this format may hold (alpha included)
    required: tuple[str, ...]
    delta: DeltaFn
    rank: Callable[[Parts], int]
    # Optional: the delta as a low-rank product, so SVDs run on r x r cores instead of the full matrix.
    factors: Callable[[Parts], Factors] | None = None
    needs_base: bool = False
    priority: int = 0
    # Optional: one line per problem with a module's tensors (pairing, shapes, NaN); default: finiteness only.
    problems: Callable[[str, Parts], list[str]] | None = None


DELTA_FORMATS: dict[str, DeltaFormat] = {}


def register_delta_format(fmt: DeltaFormat) -> None:
    """Make the tools understand modules whose keys carry one of `fmt.markers` (the plug-in point)."""
    if fmt.name in DELTA_FORMATS:
        raise ValueError(f"a delta format named {fmt.name!r} is already registered")
    DELTA_FORMATS[fmt.name] = fmt


_plugins_loaded = False


def known_formats() -> dict[str, DeltaFormat]:
    """The registry, after the optional LyCORIS algorithms registered themselves (once, on first use)."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        from library.lora.tools.lycoris_formats import register_lycoris_formats

        register_lycoris_formats()
    return DELTA_FORMATS


def all_suffixes() -> list[str]:
    """Every registered suffix, longest first (so `lora_down.weight` wins over `weight`)."""
    found = {s for fmt in known_formats().values() for s in fmt.suffixes}
    return sorted(found, key=len, reverse=True)


def split_key(key: str) -> tuple[str, str] | None:
    """`module.suffix` -> (module, suffix) for any registered suffix, else None."""
    for suffix in all_suffixes():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return None


def group_keys(names: Iterable[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """{module: {suffix: full key}} for keys of registered formats, plus the keys that are not."""
    modules: dict[str, dict[str, str]] = {}
    other: list[str] = []
    for name in names:
        parts = split_key(name)
        if parts is None:
            other.append(name)
        else:
            modules.setdefault(parts[0], {})[parts[1]] = name
    return modules, other


def format_of(parts: Iterable[str], label: str = "module") -> DeltaFormat:
    """The registered format whose marker is among `parts`' suffixes (highest priority on a tie)."""
    present = set(parts)
    found = [fmt for fmt in known_formats().values() if present & set(fmt.markers)]
    top = [f for f in found if f.priority == max((g.priority for g in found), default=0)]
    if len(top) != 1:
        known = ", ".join(f"{f.name} ({'/'.join(f.markers)})" for f in known_formats().values())
        what = "no" if not found else "several"
        raise LoRAFileError(f"{label}: {what} known LoRA algorithm in keys {sorted(present)}", [f"known: {known}"])
    fmt = top[0]
    missing = [s for s in fmt.required if s not in present]
    if missing:
        raise LoRAFileError(f"{label}: {fmt.name} module lacks {', '.join(missing)}")
    return fmt


def module_delta(parts: Parts, label: str = "module", *, shape: tuple[int, ...] | None = None,
                 base_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 weight change of one module (alpha / rank applied, multiplier 1).

    The one function every tool computes a module's change with. `shape` is the
    layer's weight shape when known; `base_weight` is needed by formats whose change
    depends on the weight (DoRA) and refused-for-want-of otherwise.
    """
    fmt = format_of(parts, label)
    if fmt.needs_base and base_weight is None:
        raise LoRAFileError(f"{label}: a {fmt.name} module's change depends on the base weight",
                            ["merge it into a checkpoint (lorasmith lora merge --pretrained_model_name_or_path ...)"])
    out = fmt.delta(parts, shape, base_weight)
    return out.reshape(shape) if shape is not None and out.numel() == _numel(shape) else out


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def module_rank(parts: Parts, label: str = "module") -> int:
    return format_of(parts, label).rank(parts)


def module_factors(parts: Parts, label: str = "module") -> Factors | None:
    """(up, down, scale) when the format is a plain low-rank product, else None."""
    fmt = format_of(parts, label)
    return fmt.factors(parts) if fmt.factors is not None else None


# -- the standard LoRA / LoCon layout (sd-scripts networks.lora) -----------------------------------

def lora_scale(parts: Parts) -> float:
    """alpha / rank, with sd-scripts' rule that a missing or zero alpha means alpha = rank."""
    rank = int(parts[keys.DOWN].shape[0])
    alpha = parts.get(keys.ALPHA)
    return keys.effective_alpha(None if alpha is None else float(alpha), rank) / rank


def _lora_delta(parts: Parts, shape: tuple[int, ...] | None = None, base: torch.Tensor | None = None) -> torch.Tensor:
    return delta_weight(parts[keys.UP], parts[keys.DOWN], lora_scale(parts))


def _lora_factors(parts: Parts) -> Factors:
    up, down = parts[keys.UP].float(), parts[keys.DOWN].float()
    return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1), lora_scale(parts)


STANDARD_LORA = DeltaFormat(
    name="LoRA",
    markers=(keys.DOWN,),
    suffixes=(keys.DOWN, keys.UP, keys.ALPHA),
    required=(keys.DOWN, keys.UP),
    delta=_lora_delta,
    rank=lambda parts: int(parts[keys.DOWN].shape[0]),
    factors=_lora_factors,
    problems=lambda name, parts: structure_problems({f"{name}.{s}": t for s, t in parts.items()}),
)
register_delta_format(STANDARD_LORA)
