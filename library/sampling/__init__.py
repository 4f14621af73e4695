"""The bundled sampler: k-diffusion style samplers, A1111 prompt syntax, txt2img with LoRAs.

Public API:
    generate(bundle, SampleRequest(...)) -> list[GeneratedImage]
    SamplingSession(bundle).generate(request)          # keeps prompt cache and applied LoRAs
    sample_for_training(bundle, network, prompt_line, sampler=..., seed=..., clip_skip=...)
    sample_from_config(train_config, bundle, network, epoch=..., step=...) -> list[Path]
    resolve_sampler(name) -> SamplerSpec               # A1111 names and sd-scripts aliases
    save_png(image, path, parameters)                  # atomic PNG with the `parameters` chunk
"""
from library.sampling.infotext import format_infotext, parse_infotext, save_png
from library.sampling.pipeline import (
    GeneratedImage,
    SampleRequest,
    SamplingSession,
    generate,
)
from library.sampling.sampler_registry import SAMPLERS, resolve_sampler, sampler_names
from library.sampling.training_samples import (
    parse_prompt_line,
    read_prompt_entries,
    read_prompt_file,
    sample_for_training,
    sample_from_config,
    save_training_sample,
    training_sample_path,
)

__all__ = [
    "SAMPLERS", "GeneratedImage", "SampleRequest", "SamplingSession", "format_infotext", "generate",
    "parse_infotext", "parse_prompt_line", "read_prompt_entries", "read_prompt_file", "resolve_sampler",
    "sample_for_training", "sample_from_config",
    "sampler_names", "save_png", "save_training_sample", "training_sample_path",
]
