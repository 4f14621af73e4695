"""The built-in `tiny-world` base model: the tiny architecture with the shipped pretrained weights.

The weights (`library/models/data/tiny_world.safetensors`, fp16, keys
`unet.*`, `vae.*`, `text_encoder.*` in the diffusers/transformers module
layouts) were made by `python -m library.world.pretrain`; `tiny_world.json`
beside them records how. The architecture configs are the package's `tiny`
ones, unchanged, so every LoRA that fits `tiny` fits `tiny-world`. The VAE's
latent statistics were folded into its quant convs during pretraining, which is
why the standard scaling factor 0.18215 in that config is the right one.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file

from library.errors import ModelLoadError
from library.models.bundle import ModelBundle, ModelFacts, count_parameters, dtype_name
from library.models.configs import load_family_configs
from library.models.hashing import file_sha256
from library.models.modules import assign_weights, build_component, freeze
from library.models.tokenizer import load_tokenizer

NAME = "tiny-world"
COMPONENTS = ("unet", "vae", "text_encoder")


def weights_path() -> Path:
    """Where the shipped weights live inside the installed package."""
    return Path(str(resources.files("library.models").joinpath("data").joinpath("tiny_world.safetensors")))


def provenance() -> dict:
    """The rebuild record written beside the weights (recipe, command, durations, losses)."""
    return json.loads(weights_path().with_suffix(".json").read_text(encoding="utf-8"))


def split_components(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
    """`unet.x` / `vae.x` / `text_encoder.x` -> per-component state dicts cast to dtype."""
    parts: dict[str, dict[str, torch.Tensor]] = {c: {} for c in COMPONENTS}
    for key, tensor in state.items():
        component, _, rest = key.partition(".")
        if component not in parts:
            raise ModelLoadError(f"{weights_path()}: unexpected tensor {key!r}",
                                 ["the file must hold only unet.*, vae.* and text_encoder.* tensors; "
                                  "rebuild it with python -m library.world.pretrain"])
        parts[component][rest] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return parts


def build_tiny_world_bundle(dtype: torch.dtype = torch.float32, path: Path | None = None) -> ModelBundle:
    """Load `tiny-world` as a frozen ModelBundle (the registry's builder for this name)."""
    path = path or weights_path()
    if not path.is_file():
        raise ModelLoadError(f"tiny-world weights missing: {path}",
                             ["reinstall lorasmith, or rebuild them: python -m library.world.pretrain "
                              f"--out {path.parent}"])
    configs = load_family_configs("tiny")
    parts = split_components(load_file(str(path)), dtype)
    modules: dict[str, torch.nn.Module] = {}
    for component in COMPONENTS:
        module = build_component(component, configs[component], empty=True)
        assign_weights(module, parts[component])
        modules[component] = freeze(module)
    facts = ModelFacts(
        architecture="sd1", prediction_type=configs["scheduler"].get("prediction_type", "epsilon"),
        source=f"builtin:{NAME}", source_format="builtin", name=NAME, model_hash=file_sha256(path),
        legacy_hash=None, weights_picked="only one set", dtype=dtype_name(dtype),
        parameter_counts=count_parameters(modules), config_family="tiny", stored_dtype="fp16",
        notes=("pretrained on the shapes world (library.world); the star shape was held back",),
    )
    return ModelBundle(tokenizer=load_tokenizer(), scheduler_config=configs["scheduler"], facts=facts,
                       **modules)  # type: ignore[arg-type]
