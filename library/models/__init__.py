"""Base models, offline: the built-in tiny model, diffusers folders and single-file checkpoints.

Public API:
    load_model_bundle(name_or_path, *, vae=None, use_ema_weights=False, dtype=torch.float32,
                      v2=False, v_parameterization=False)   # SD1.x, SD2.x, SDXL
    build_tiny_bundle(seed=0)
    load_tokenizer()
    make_noise_scheduler(bundle)
    with_prediction_type(bundle, prediction_type, source)
    ModelBundle, ModelFacts

Which family a bundle is: `bundle.facts.family` (a ModelFamily: `.name` "sd1" | "sd2" | "sdxl",
prefixes, metadata ids), `bundle.facts.prediction_type` ("epsilon" | "v_prediction") with
`prediction_known`/`prediction_source`; SDXL bundles have `text_encoder_2` and `tokenizer_2`.

Names are imported on first use (library.lazy), so registering a command loads no torch.
"""
from __future__ import annotations

from library.lazy import lazy_exports

_EXPORTS = {
    "BUILTIN_MODELS": "builtin", "build_tiny_bundle": "builtin", "builtin_names": "builtin",
    "register_builtin": "builtin", "ModelBundle": "bundle", "ModelFacts": "bundle",
    "count_parameters": "bundle", "make_noise_scheduler": "bundle", "load_model_bundle": "loading",
    "load_tokenizer": "tokenizer", "with_prediction_type": "loading",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
