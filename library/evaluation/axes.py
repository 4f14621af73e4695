"""X/Y/Z axis types: how a value list is read, what a value changes, how it is labelled.

A cell's settings are a `CellSettings` (a sampling request plus the checkpoint, the
grid's own LoRA file and weight, and the init image of an img2img grid); each axis type
is a pure `apply(settings, value)`.
`cost` orders the loops: switching checkpoints is the most expensive, then LoRA files,
so those axes become the outermost loops when cells are run.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from library.errors import SamplingError
from library.evaluation.values import (
    parse_float_values,
    parse_int_values,
    parse_size,
    split_csv,
)
from library.sampling.infotext import format_number

if TYPE_CHECKING:  # torch comes with the pipeline: imported when a grid runs, not for `grid --help`
    from PIL import Image

    from library.sampling.pipeline import SampleRequest


@dataclass(frozen=True)
class CellSettings:
    """Everything one grid cell is generated with."""

    request: SampleRequest
    checkpoint: str
    lora_file: str | None = None
    lora_weight: float = 1.0
    vae: str | None = None  # a VAE axis value: a VAE file/folder, "" = the model's own; None = --vae as given
    init_image: Image.Image | None = field(default=None, compare=False, repr=False)  # img2img when set

    def final_request(self) -> SampleRequest:
        """The request with the grid's LoRA added to its LoRAs."""
        if self.lora_file is None:
            return self.request
        return dataclasses.replace(self.request, loras=self.request.loras + ((self.lora_file, self.lora_weight),))


def _req(s: CellSettings, **changes: Any) -> CellSettings:
    return dataclasses.replace(s, request=dataclasses.replace(s.request, **changes))


@dataclass(frozen=True)
class AxisType:
    name: str
    parse: Callable[[str, CellSettings, str | None], list[Any]]
    apply: Callable[[CellSettings, Any, list[Any]], CellSettings]  # (settings, value, all values)
    label: Callable[[Any], str]
    cost: int = 0


def _strings(text: str, base: CellSettings, lora_dir: str | None) -> list[str]:
    return split_csv(text)


def _prompt_sr(text: str, base: CellSettings, lora_dir: str | None) -> list[str]:
    values = split_csv(text)
    if values and values[0] not in base.request.prompt and values[0] not in base.request.negative_prompt:
        raise SamplingError(f"Prompt S/R: the search term {values[0]!r} is not in the prompt or negative prompt",
                            ["the first value is what gets replaced; write it into --prompt as well"])
    return values


def _negative_sr(text: str, base: CellSettings, lora_dir: str | None) -> list[str]:
    values = split_csv(text)
    if values and values[0] not in base.request.negative_prompt:
        raise SamplingError(f"Negative S/R: the search term {values[0]!r} is not in the negative prompt",
                            ["the first value is what gets replaced; write it into --negative_prompt as well"])
    return values


def _apply_prompt_sr(s: CellSettings, value: str, values: list[str]) -> CellSettings:
    """Replace every occurrence of the first value (the search term) in prompt and negative prompt."""
    r = s.request
    return _req(s, prompt=r.prompt.replace(values[0], value), negative_prompt=r.negative_prompt.replace(values[0], value))


def _apply_negative_sr(s: CellSettings, value: str, values: list[str]) -> CellSettings:
    return _req(s, negative_prompt=s.request.negative_prompt.replace(values[0], value))


def _denoising(text: str, base: CellSettings, lora_dir: str | None) -> list[float]:
    """Denoising strengths; only an img2img or hires-fix grid has something to denoise."""
    if base.init_image is None and not base.request.enable_hr:
        raise SamplingError("Denoising needs an init image (img2img) or hires fix",
                            ["add --init_image FILE or --enable_hr; a txt2img grid starts from pure noise"])
    values = parse_float_values(text, field="Denoising")
    bad = [format_number(v) for v in values if not 0.0 < v <= 1.0]
    if bad:
        raise SamplingError(f"Denoising: {', '.join(bad)} outside (0, 1]",
                            ["1 re-draws everything; 0.3 keeps most of the init image"])
    return values


def _hires_upscalers(text: str, base: CellSettings, lora_dir: str | None) -> list[str]:
    """Hires fix upscalers: A1111's Latent modes, Lanczos, or upscaler model files (checked when used)."""
    return split_csv(text)


def _vaes(text: str, base: CellSettings, lora_dir: str | None) -> list[str]:
    """VAE files or diffusers VAE folders; A1111's "None" is the model's own VAE, "Automatic" the --vae given."""
    values = []
    for item in split_csv(text):
        if item.lower() == "none":
            values.append("")
        elif item.lower() == "automatic":
            values.append(AUTOMATIC_VAE)
        elif Path(os.path.expanduser(item)).exists():
            values.append(os.path.expanduser(item))
        else:
            raise SamplingError(f"VAE axis: {item!r} is not a file or folder",
                                ["give VAE .safetensors/.ckpt files or diffusers VAE folders; None = the model's own VAE"])
    return values


AUTOMATIC_VAE = "Automatic"


def _vae_label(value: str) -> str:
    if value == "":
        return "VAE: None"
    return "VAE: Automatic" if value == AUTOMATIC_VAE else f"VAE: {Path(value).name}"


def _hires(s: CellSettings, **changes: Any) -> CellSettings:
    """A hires axis turns hires fix on for its cells."""
    return _req(s, enable_hr=True, **changes)


def _samplers(text: str, base: CellSettings, lora_dir: str | None) -> list[str]:
    from library.sampling.sampler_registry import resolve_sampler

    return [resolve_sampler(v).name for v in split_csv(text)]


def _sizes(text: str, base: CellSettings, lora_dir: str | None) -> list[tuple[int, int]]:
    return [parse_size(v) for v in split_csv(text)]


def _numbers(kind: str, field: str) -> Callable[[str, CellSettings, str | None], list[Any]]:
    def parse(text: str, base: CellSettings, lora_dir: str | None) -> list[Any]:
        return parse_int_values(text, field=field) if kind == "int" else parse_float_values(text, field=field)
    return parse


_EPOCH = re.compile(r"-(\d{6})$")
_STEP = re.compile(r"-step(\d{8})$")


def lora_sort_key(path: str) -> tuple[int, int, str]:
    """Per-epoch (or per-step) saves in order, the final file (no number) last."""
    stem = Path(path).stem
    if m := _EPOCH.search(stem):
        return (0, int(m[1]), stem)
    if m := _STEP.search(stem):
        return (1, int(m[1]), stem)
    return (2, 0, stem)


def lora_label(path: str) -> str:
    stem = Path(path).stem
    if m := _EPOCH.search(stem):
        return f"epoch {int(m[1])}"
    if m := _STEP.search(stem):
        return f"step {int(m[1])}"
    return f"{stem} (final)"


def expand_lora_files(text: str, lora_dir: str | None = None) -> list[str]:
    """A comma list of LoRA files, names in lora_dir, or globs; globs sorted by epoch, final last."""
    out: list[str] = []
    for item in split_csv(text):
        if any(ch in item for ch in "*?["):
            found = [p for p in glob.glob(os.path.expanduser(item)) if p.endswith(".safetensors")]
            if lora_dir and not found:
                found = glob.glob(os.path.join(lora_dir, item if item.endswith(".safetensors") else item + ".safetensors"))
            if not found:
                raise SamplingError(f"LoRA: the pattern {item!r} matches no .safetensors file",
                                    ["quote the pattern so the shell leaves it alone, e.g. 'out/name-*.safetensors'"])
            out += sorted(found, key=lora_sort_key)
        else:
            out.append(str(_one_lora(item, lora_dir)))
    return out


def _one_lora(item: str, lora_dir: str | None) -> Path:
    path = Path(os.path.expanduser(item))
    candidates = [path, path.with_suffix(".safetensors")] if path.suffix != ".safetensors" else [path]
    if lora_dir:
        candidates += [Path(lora_dir) / path.name, Path(lora_dir) / f"{path.name}.safetensors"]
    for c in candidates:
        if c.is_file():
            return c
    raise SamplingError(f"LoRA: {item!r} is not a file", ["give a .safetensors path, a NAME in --lora_dir, or a glob"])


def _loras(text: str, base: CellSettings, lora_dir: str | None) -> list[str]:
    return expand_lora_files(text, lora_dir)


def _labelled(title: str) -> Callable[[Any], str]:
    return lambda v: f"{title}: {format_number(v) if isinstance(v, float) else v}"


AXIS_TYPES: dict[str, AxisType] = {t.name: t for t in (
    AxisType("Prompt S/R", _prompt_sr, _apply_prompt_sr, str),
    AxisType("Negative S/R", _negative_sr, _apply_negative_sr, str),
    AxisType("Checkpoint", _strings, lambda s, v, vals: dataclasses.replace(s, checkpoint=v),
             lambda v: Path(v).stem if os.sep in v or "." in v else v, cost=100),
    AxisType("VAE", _vaes, lambda s, v, vals: dataclasses.replace(s, vae=None if v == AUTOMATIC_VAE else v),
             _vae_label, cost=90),
    AxisType("LoRA", _loras, lambda s, v, vals: dataclasses.replace(s, lora_file=v), lora_label, cost=50),
    AxisType("Clip skip", _numbers("int", "Clip skip"), lambda s, v, vals: _req(s, clip_skip=v), _labelled("Clip skip"), 20),
    AxisType("LoRA weight", _numbers("float", "LoRA weight"), lambda s, v, vals: dataclasses.replace(s, lora_weight=v),
             _labelled("LoRA weight"), cost=10),
    AxisType("Size", _sizes, lambda s, v, vals: _req(s, width=v[0], height=v[1]), lambda v: f"Size: {v[0]}x{v[1]}", 5),
    AxisType("Sampler", _samplers, lambda s, v, vals: _req(s, sampler=v), str, cost=3),
    AxisType("Steps", _numbers("int", "Steps"), lambda s, v, vals: _req(s, steps=v), _labelled("Steps"), cost=3),
    AxisType("CFG Scale", _numbers("float", "CFG Scale"), lambda s, v, vals: _req(s, cfg_scale=v), _labelled("CFG Scale"), 2),
    AxisType("CFG Rescale", _numbers("float", "CFG Rescale"), lambda s, v, vals: _req(s, guidance_rescale=v),
             _labelled("CFG Rescale"), 2),  # the CFG Rescale extension's axis (Lin et al. 2023 guidance_rescale)
    AxisType("Denoising", _denoising, lambda s, v, vals: _req(s, denoising_strength=v), _labelled("Denoising"), 2),
    AxisType("Hires upscaler", _hires_upscalers, lambda s, v, vals: _hires(s, hr_upscaler=v), str, cost=2),
    AxisType("Hires steps", _numbers("int", "Hires steps"), lambda s, v, vals: _hires(s, hr_second_pass_steps=v),
             _labelled("Hires steps"), cost=2),
    AxisType("Hires upscale", _numbers("float", "Hires upscale"), lambda s, v, vals: _hires(s, hr_scale=v),
             _labelled("Hires upscale"), cost=5),
    AxisType("Seed", _numbers("int", "Seed"), lambda s, v, vals: _req(s, seed=v), _labelled("Seed"), cost=0),
)}


def axis_type(name: str) -> AxisType:
    """Axis type by name, case-insensitive; unknown names list the choices."""
    for key, value in AXIS_TYPES.items():
        if key.lower() == str(name).strip().lower():
            return value
    raise SamplingError(f"unknown axis type {name!r}", [f"choose one of: {', '.join(AXIS_TYPES)}"])
