"""The LoRA toolbox: `lorasmith lora resize | merge | extract` and the GUI's Utilities tab.

Every tool is built on one function, `delta.module_delta(parts)`, which turns the
tensors a LoRA file holds for one module into that module's weight delta. Which
algorithm a module uses is recognised by its key suffix through the registry in
`delta.py` (`register_delta_format`): the standard LoRA/LoCon layout is registered
there; further algorithms (LoHa, LoKr, DoRA...) plug in with one call each.

Modules: `delta` (registry), `lycoris_formats` (LoHa/LoKr/DoRA through
`library.lora.algorithms`, registered on the registry's first use when that package exists), `svd` (pure low-rank math), `lora_reader` (lazy LoRA
files), `model_weights` (lazy base/tuned checkpoints), `output` (guards,
provenance, streaming writer), `resize`, `merge`, `merge_checkpoint`, `extract`,
`cli`.
"""

# Nothing is imported here: `lorasmith --help` registers `tools.cli` and must not load torch.
