"""LoHa, LoKr and DoRA modules for the toolbox, computed by `library.lora.algorithms`.

The LyCORIS network types live in `library.lora.algorithms` (one module per
algorithm, each with its paper's formula); this file only plugs them into the
toolbox's registry by key suffix, handing a module's tensors to
`registry.delta_from_parts` (the file-side twin of the adapters' delta_weight()),
so the toolbox and the network compute the same change. It does nothing in a
build without that package. Tucker LoCon (`lora_mid`) is listed here too: it shares the adapters' formula.
DoRA (Liu et al. 2024) rescales W + delta, so its
change needs the base weight: merging into a checkpoint works, resize and merging
into one LoRA refuse it by name.
"""
from __future__ import annotations

from library.lora import keys
from library.lora.tools.delta import DELTA_FORMATS, DeltaFormat, register_delta_format


def register_lycoris_formats() -> list[str]:
    """Register LoHa, LoKr, Tucker LoCon and DoRA when `library.lora.algorithms` is installed; returns the names added."""
    try:
        from library.lora.algorithms import registry
        from library.lora.algorithms.dora import DORA_KEY
        from library.lora.algorithms.loha import LoHaModule
        from library.lora.algorithms.lokr import LoKrModule
    except ImportError:
        return []

    def problems(name: str, parts) -> list[str]:
        return registry.parts_problems(name, parts)

    def algorithm(name: str, cls, markers: tuple[str, ...]) -> DeltaFormat:
        return DeltaFormat(name=name, markers=markers, suffixes=(*cls.KEYS, keys.ALPHA), required=(),
                           delta=lambda parts, shape, base: registry.delta_from_parts(parts, weight_shape=shape),
                           rank=lambda parts: cls.parts_rank(parts) or 0, problems=problems)

    every_key = (keys.DOWN, keys.UP, keys.MID, keys.ALPHA, *LoHaModule.KEYS, *LoKrModule.KEYS, DORA_KEY)
    formats = [
        algorithm("LoHa", LoHaModule, ("hada_w1_a",)),
        algorithm("LoKr", LoKrModule, ("lokr_w1", "lokr_w1_a")),
        # Tucker LoCon: lora_down/lora_up with a lora_mid core; no (up, down) factors, so concatenation
        # refuses it and resize re-factorises its full delta. Wins over the plain LoRA layout by priority.
        DeltaFormat(name="Tucker LoCon", markers=(keys.MID,), suffixes=(keys.DOWN, keys.UP, keys.MID, keys.ALPHA),
                    required=(keys.DOWN, keys.UP, keys.MID), priority=1,
                    delta=lambda parts, shape, base: registry.delta_from_parts(parts, weight_shape=shape),
                    rank=lambda parts: int(parts[keys.DOWN].shape[0]), problems=problems),
        DeltaFormat(name="DoRA", markers=(DORA_KEY,), suffixes=every_key, required=(), needs_base=True, priority=2,
                    delta=lambda parts, shape, base: registry.delta_from_parts(parts, base_weight=base),
                    rank=lambda parts: 0, problems=problems),
    ]
    added = [f.name for f in formats if f.name not in DELTA_FORMATS]
    for fmt in formats:
        if fmt.name in added:
            register_delta_format(fmt)
    return added
