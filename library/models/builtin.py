"""Built-in base models, chosen by name instead of a path.

`tiny` is the tiny SD1.x-shaped architecture (configs in `configs/tiny/`) with
random weights from a fixed seed: the model every test and the demo run on.
Builders are registered by name in `BUILTIN_MODELS`, so further built-ins
(e.g. one with pretrained weights shipped in the package) are one
`register_builtin` call away.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from library.models.bundle import ModelBundle, ModelFacts, count_parameters, dtype_name
from library.models.configs import TINY_SD2_FAMILY, TINY_SDXL_FAMILY, family_components, load_family_configs
from library.models.hashing import state_dict_sha256
from library.models.modules import build_component, cast_module, freeze
from library.models.tokenizer import OPENCLIP_PAD_TOKEN, load_tokenizer

BuiltinBuilder = Callable[[torch.dtype], ModelBundle]
BUILTIN_MODELS: dict[str, BuiltinBuilder] = {}
BUILTIN_CONFIGS: dict[str, str] = {}  # name -> shipped config family, for what must know the shapes before building


def register_builtin(name: str, builder: BuiltinBuilder, configs: str | None = None) -> None:
    """Make `builder(dtype)` loadable as `load_model_bundle(name)`; `configs` names its shipped config family."""
    if name in BUILTIN_MODELS:
        raise ValueError(f"built-in model {name!r} is already registered")
    BUILTIN_MODELS[name] = builder
    if configs is not None:
        BUILTIN_CONFIGS[name] = configs


def builtin_names() -> list[str]:
    return sorted(BUILTIN_MODELS)


def bundle_state_dict(bundle: ModelBundle) -> dict[str, torch.Tensor]:
    """All weights of a bundle under component-prefixed names (for hashing)."""
    merged: dict[str, torch.Tensor] = {}
    for component, module in bundle.components().items():
        merged.update({f"{component}.{k}": v for k, v in module.state_dict().items()})
    return merged


def build_random_bundle(family: str, seed: int, name: str, dtype: torch.dtype = torch.float32,
                        architecture: str = "sd1") -> ModelBundle:
    """A bundle of a shipped architecture with weights drawn from `seed`.

    Each component gets its own seed (seed, seed+1, seed+2, seed+3 in the order unet, vae,
    text_encoder, text_encoder_2) inside a forked RNG, so the result does not depend on, or
    disturb, the caller's random state. `architecture` is the model family (library/models/family.py).
    """
    configs = load_family_configs(family)
    order = ("unet", "vae", *[c for c in family_components(family) if c.startswith("text_encoder")])
    modules: dict[str, torch.nn.Module] = {}
    with torch.random.fork_rng(devices=[]):
        for offset, component in enumerate(order):
            torch.manual_seed(seed + offset)
            modules[component] = build_component(component, configs[component])
    for module in modules.values():
        freeze(cast_module(module, dtype))
    bundle = ModelBundle(
        tokenizer=load_tokenizer(), text_encoder=modules["text_encoder"], vae=modules["vae"], unet=modules["unet"],
        scheduler_config=configs["scheduler"], facts=None,  # type: ignore[arg-type]
        text_encoder_2=modules.get("text_encoder_2"),
        tokenizer_2=load_tokenizer(OPENCLIP_PAD_TOKEN) if "text_encoder_2" in modules else None,
    )
    bundle.facts = ModelFacts(
        architecture=architecture,
        prediction_type=configs["scheduler"].get("prediction_type", "epsilon"),
        source=f"builtin:{name}",
        source_format="builtin",
        name=name,
        model_hash=state_dict_sha256(bundle_state_dict(bundle)),
        legacy_hash=None,
        weights_picked="only one set",
        dtype=dtype_name(dtype),
        parameter_counts=count_parameters(modules),
        config_family=family,
        stored_dtype=dtype_name(dtype),
        notes=(f"random weights from seed {seed}",),
        detected_by=(f"the built-in {name} (config family {family})",),
        prediction_source=f"the built-in's scheduler config ({family})",
    )
    return bundle


def build_tiny_bundle(seed: int = 0, dtype: torch.dtype = torch.float32) -> ModelBundle:
    """The built-in tiny model: tiny-sd architecture, random weights, identical on every build."""
    return build_random_bundle("tiny", seed, name="tiny", dtype=dtype)


register_builtin("tiny", lambda dtype: build_tiny_bundle(0, dtype=dtype), configs="tiny")


def _build_tiny_world(dtype: torch.dtype) -> ModelBundle:
    # Imported lazily: library.world builds on library.models.
    from library.world.model import build_tiny_world_bundle

    return build_tiny_world_bundle(dtype)


register_builtin("tiny-world", _build_tiny_world, configs="tiny")


def build_tiny_sdxl_bundle(seed: int = 0, dtype: torch.dtype = torch.float32) -> ModelBundle:
    """`tiny-sdxl`: SDXL's block layout and two text encoders at tiny widths, random weights."""
    return build_random_bundle(TINY_SDXL_FAMILY, seed, name=TINY_SDXL_FAMILY, dtype=dtype, architecture="sdxl")


register_builtin(TINY_SDXL_FAMILY, lambda dtype: build_tiny_sdxl_bundle(0, dtype=dtype), configs=TINY_SDXL_FAMILY)


def build_tiny_sd2_bundle(seed: int = 0, dtype: torch.dtype = torch.float32) -> ModelBundle:
    """`tiny-sd2`: SD2.x 768-v's layout (OpenCLIP-style text encoder, v-prediction) at tiny widths."""
    bundle = build_random_bundle(TINY_SD2_FAMILY, seed, name=TINY_SD2_FAMILY, dtype=dtype, architecture="sd2")
    bundle.tokenizer = load_tokenizer(OPENCLIP_PAD_TOKEN)
    return bundle


register_builtin(TINY_SD2_FAMILY, lambda dtype: build_tiny_sd2_bundle(0, dtype=dtype), configs=TINY_SD2_FAMILY)
