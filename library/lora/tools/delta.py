"""Weight deltas of one LoRA module, by algorithm, recognised by key suffix.

`module_delta(parts)` is the one function every tool computes a module's change
with: `parts` maps a key suffix (`lora_down.weight`, `lora_up.weight`, `alpha`...)
to the tensor the file holds under `<module>.<suffix>`. The algorithm is picked by
a *marker* suffix only it uses. The plug-in point for other algorithms is
`register_delta_format`: a LoHa module, for instance, registers marker
`hada_w1_a` with its suffixes and a `delta` function, and resize, merge and
extract handle it from then on (merge into a checkpoint and SVD merge exactly;
resize re-factorises it as a standard LoRA).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from library.errors import LoRAFileError
from library.lora import keys
from library.lora.module import delta_weight

Parts = Mapping[str, torch.Tensor]
# (up as [out, r], down as [r, in*k*k], scale): the delta is scale * up @ down.
Factors = tuple[torch.Tensor, torch.Tensor, float]


@dataclass(frozen=True)
class DeltaFormat:
    """One algorithm's key layout and its delta formula."""

    name: str
    marker: str  # suffix only this algorithm writes; its presence picks the format
    suffixes: tuple[str, ...]  # every suffix a module of this format may hold (alpha included)
    required: tuple[str, ...]
    delta: Callable[[Parts], torch.Tensor]  # float32 delta, alpha scale applied, shaped like the layer weight
    rank: Callable[[Parts], int]
    # Optional: the delta as a low-rank product, so SVDs run on r x r cores instead of the full matrix.
    factors: Callable[[Parts], Factors] | None = None


DELTA_FORMATS: dict[str, DeltaFormat] = {}


def register_delta_format(fmt: DeltaFormat) -> None:
    """Make the tools understand modules whose keys carry `fmt.marker`."""
    if fmt.marker in DELTA_FORMATS:
        raise ValueError(f"a delta format with marker {fmt.marker!r} is already registered")
    DELTA_FORMATS[fmt.marker] = fmt


def all_suffixes() -> list[str]:
    """Every registered suffix, longest first (so `lora_down.weight` wins over `weight`)."""
    found = {s for fmt in DELTA_FORMATS.values() for s in fmt.suffixes}
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
    """The registered format whose marker is among `parts`' suffixes."""
    present = set(parts)
    found = [fmt for marker, fmt in DELTA_FORMATS.items() if marker in present]
    if len(found) != 1:
        known = ", ".join(f"{f.name} ({f.marker})" for f in DELTA_FORMATS.values())
        what = "no" if not found else "several"
        raise LoRAFileError(f"{label}: {what} known LoRA algorithm in keys {sorted(present)}", [f"known: {known}"])
    fmt = found[0]
    missing = [s for s in fmt.required if s not in present]
    if missing:
        raise LoRAFileError(f"{label}: {fmt.name} module lacks {', '.join(missing)}")
    return fmt


def module_delta(parts: Parts, label: str = "module") -> torch.Tensor:
    """The float32 weight change of one module (alpha / rank applied, multiplier 1)."""
    return format_of(parts, label).delta(parts)


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


def _lora_delta(parts: Parts) -> torch.Tensor:
    return delta_weight(parts[keys.UP], parts[keys.DOWN], lora_scale(parts))


def _lora_factors(parts: Parts) -> Factors:
    up, down = parts[keys.UP].float(), parts[keys.DOWN].float()
    return up.reshape(up.shape[0], -1), down.reshape(down.shape[0], -1), lora_scale(parts)


STANDARD_LORA = DeltaFormat(
    name="LoRA",
    marker=keys.DOWN,
    suffixes=(keys.DOWN, keys.UP, keys.ALPHA),
    required=(keys.DOWN, keys.UP),
    delta=_lora_delta,
    rank=lambda parts: int(parts[keys.DOWN].shape[0]),
    factors=_lora_factors,
)
register_delta_format(STANDARD_LORA)
