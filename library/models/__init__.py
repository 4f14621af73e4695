"""Base models, offline: the built-in tiny model, diffusers folders and single-file checkpoints.

Public API:
    load_model_bundle(name_or_path, *, vae=None, use_ema_weights=False, dtype=torch.float32)
    build_tiny_bundle(seed=0)
    load_tokenizer()
    make_noise_scheduler(bundle)
    ModelBundle, ModelFacts
"""
from library.models.builtin import BUILTIN_MODELS, build_tiny_bundle, builtin_names, register_builtin
from library.models.bundle import ModelBundle, ModelFacts, count_parameters, make_noise_scheduler
from library.models.loading import load_model_bundle
from library.models.tokenizer import load_tokenizer

__all__ = [
    "BUILTIN_MODELS",
    "ModelBundle",
    "ModelFacts",
    "build_tiny_bundle",
    "builtin_names",
    "count_parameters",
    "load_model_bundle",
    "load_tokenizer",
    "make_noise_scheduler",
    "register_builtin",
]
