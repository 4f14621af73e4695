"""LoRA networks in Kohya's format: targets, adapters, files, metadata, inspection.

Public entry points:
- `LoRANetwork.create(unet, text_encoder, rank=..., alpha=...)` / `.from_weights(path, unet, text_encoder)`
- `network_from_config(config, unet, text_encoder)` for the trainer
- `load_lora(path_or_state_dict)` -> checked tensors in Kohya layout
- `build_metadata(...)`, `save_lora(...)`, `precalculate_hashes(...)`
"""
from library.lora.file import precalculate_hashes, save_lora
from library.lora.from_config import network_from_config
from library.lora.loading import LoadedLoRA, load_lora
from library.lora.metadata import build_metadata, model_metadata, model_metadata_from_facts
from library.lora.network import LoRANetwork

__all__ = [
    "LoRANetwork",
    "LoadedLoRA",
    "build_metadata",
    "load_lora",
    "model_metadata",
    "model_metadata_from_facts",
    "network_from_config",
    "precalculate_hashes",
    "save_lora",
]
