"""LoRA networks in Kohya's format: targets, adapters, files, metadata, inspection.

Public entry points:
- `LoRANetwork.create(unet, text_encoder, rank=..., alpha=...)` / `.from_weights(path, unet, text_encoder)`
- `network_from_config(config, unet, text_encoder)` for the trainer
- `load_lora(path_or_state_dict)` -> checked tensors in Kohya layout
- `build_metadata(...)`, `save_lora(...)`, `precalculate_hashes(...)`

Names are imported on first use (library.lazy), so registering a command loads no torch.
"""
from __future__ import annotations

from library.lazy import lazy_exports

_EXPORTS = {
    "precalculate_hashes": "file", "save_lora": "file", "network_from_config": "from_config",
    "LoadedLoRA": "loading", "load_lora": "loading", "build_metadata": "metadata",
    "model_metadata": "metadata", "model_metadata_from_facts": "metadata", "LoRANetwork": "network",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
