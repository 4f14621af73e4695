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
"""
from library.lora.adapter import Adapter
from library.lora.algorithms.registry import delta_from_parts
from library.lora.file import precalculate_hashes, save_lora
from library.lora.from_config import network_from_config
from library.lora.loading import LoadedLoRA, load_lora
from library.lora.metadata import build_metadata, model_metadata, model_metadata_from_facts
from library.lora.network import LoRANetwork

__all__ = [
    "Adapter",
    "LoRANetwork",
    "LoadedLoRA",
    "build_metadata",
    "delta_from_parts",
    "load_lora",
    "model_metadata",
    "model_metadata_from_facts",
    "network_from_config",
    "precalculate_hashes",
    "save_lora",
]
