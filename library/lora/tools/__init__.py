"""The LoRA toolbox: `lorasmith lora resize | merge | extract` and the GUI's Utilities tab.

Every tool is built on one function, `delta.module_delta(parts)`, which turns the
tensors a LoRA file holds for one module into that module's weight delta. Which
algorithm a module uses is recognised by its key suffix through the registry in
`delta.py` (`register_delta_format`): the standard LoRA/LoCon layout is registered
there; further algorithms (LoHa, LoKr, DoRA...) plug in with one call each.

Modules: `delta` (registry), `lycoris_formats` (LoHa/LoKr/DoRA through
`library.lora.algorithms`, registered here when that package exists), `svd` (pure low-rank math), `lora_reader` (lazy LoRA
files), `model_weights` (lazy base/tuned checkpoints), `output` (guards,
provenance, streaming writer), `resize`, `merge`, `merge_checkpoint`, `extract`,
`cli`.
"""

from library.lora.tools.lycoris_formats import register_lycoris_formats

register_lycoris_formats()
