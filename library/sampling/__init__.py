"""The bundled sampler: k-diffusion style samplers, A1111 prompt syntax, txt2img with LoRAs.

Public API:
    generate(bundle, SampleRequest(...)) -> list[GeneratedImage]
    SamplingSession(bundle).generate(request)          # keeps prompt cache and applied LoRAs
    sample_for_training(bundle, network, prompt_line, sampler=..., seed=..., clip_skip=...)
    sample_from_config(train_config, bundle, network, epoch=..., step=...) -> list[Path]
    resolve_sampler(name) -> SamplerSpec               # A1111 names and sd-scripts aliases
    save_png(image, path, parameters)                  # atomic PNG with the `parameters` chunk
    parse_parameters(text) -> dict                     # A1111 infotext as PNG Info reads it
    settings_from_png(path).request(base, **changes)   # regenerate / "load from PNG"
    generate_until_stopped(session, request, stop)     # --batch_count 0, Generate forever

Names are imported on first use (library.lazy), so registering a command loads no torch.
"""
from __future__ import annotations

from library.lazy import lazy_exports

_EXPORTS = {
    "format_infotext": "infotext", "parse_infotext": "infotext", "save_png": "infotext",
    "parse_parameters": "infotext", "read_png_parameters": "infotext",
    "settings_from_png": "from_png", "settings_from_infotext": "from_png", "generate_until_stopped": "forever",
    "GeneratedImage": "pipeline", "SampleRequest": "pipeline", "SamplingSession": "pipeline",
    "generate": "pipeline", "SAMPLERS": "sampler_registry", "resolve_sampler": "sampler_registry",
    "sampler_names": "sampler_registry", "parse_prompt_line": "training_samples",
    "read_prompt_entries": "training_samples", "read_prompt_file": "training_samples",
    "sample_for_training": "training_samples", "sample_from_config": "training_samples",
    "save_training_sample": "training_samples", "training_sample_path": "training_samples",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
