"""LoRA networks in Kohya's format: targets, adapters, files, metadata, inspection.

Public entry points:
- `LoRANetwork.create(unet, text_encoder, rank=..., alpha=...)` / `.from_weights(path, unet, text_encoder)`
- `network_from_config(config, unet, text_encoder)` for the trainer
- `load_lora(path_or_state_dict)` -> checked tensors in Kohya layout
- `build_metadata(...)`, `save_lora(...)`, `precalculate_hashes(...)`
"""
from library.lora.loading import LoadedLoRA, load_lora
from library.lora.network import LoRANetwork

__all__ = ["LoRANetwork", "LoadedLoRA", "load_lora"]
