"""LoRA networks in Kohya's format: targets, adapters, files, metadata, inspection.

Algorithms (LoRA/LoCon, LoHa, LoKr, each with optional DoRA) share `Adapter`
(library.lora.adapter); each lives in library/lora/algorithms/.

Public entry points:
- `LoRANetwork.create(unet, text_encoder, rank=..., alpha=..., algo="lora"|"loha"|"lokr", dora_wd=...)`
  / `.from_weights(path, unet, text_encoder)`
- `Adapter.delta_weight(multiplier, base_weight=None)`: one module's weight change, float32
- `delta_from_parts(parts, weight_shape, base_weight, multiplier)`: the same from a file's tensors
- `network_from_config(config, unet, text_encoder)` for the trainer
- `load_lora(path_or_state_dict)` -> checked tensors in Kohya layout
- `build_metadata(...)`, `save_lora(...)`, `precalculate_hashes(...)`

Names are imported on first use (library.lazy), so registering a command loads no torch.
"""
from __future__ import annotations

from library.lazy import lazy_exports

_EXPORTS = {
    "Adapter": "adapter", "delta_from_parts": "algorithms.registry",
    "precalculate_hashes": "file", "save_lora": "file", "network_from_config": "from_config",
    "LoadedLoRA": "loading", "load_lora": "loading", "build_metadata": "metadata",
    "model_metadata": "metadata", "model_metadata_from_facts": "metadata", "LoRANetwork": "network",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
