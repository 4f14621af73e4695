"""Regenerate from a PNG: A1111 infotext (ours or A1111's) back into sampling settings.

Why: A1111's "PNG Info → Send to txt2img" is how users reproduce or vary an image they like.
`settings_from_infotext` maps the parameters A1111 writes to `SampleRequest` field names, so
the CLI (`lorasmith sample --from_png`) and the GUI (fields filled from a dropped PNG) read a
PNG the same way. Values the user gives beside it (flags, GUI edits) override the PNG's.

Read as A1111 reads them: Sampler plus Schedule type (an absent schedule type is A1111's
"Automatic"), a missing Clip skip is 1, Denoising strength only matters with hires fix (an
img2img image cannot be redone without its init image), `Hires upscale` or `Hires resize`
turn hires fix on. LoRAs stay in the prompt as `<lora:NAME:W>` tags (our writer puts
explicitly given LoRAs there too); `check_lora_hashes` compares the files found in the LoRA
folder with the infotext's `Lora hashes`, so a retrained file of the same name is not used
silently.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library.errors import SamplingError
from library.sampling.infotext import parse_parameters, read_png_parameters

# Keys that describe the image without changing how it is made again, or that are read here.
_USED = {"Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Size-1",
         "Size-2", "Clip skip", "CFG Rescale", "Denoising strength", "Hires upscale", "Hires resize",
         "Hires resize-1", "Hires resize-2", "Hires steps", "Hires upscaler"}
_INFORMATIONAL = {"Model hash", "Model", "Version", "Lora hashes", "TI hashes", "RNG", "VAE hash", "VAE",
                  "Face restoration", "Batch size", "Batch pos", "Emphasis", "Token merging ratio"}


@dataclass
class PngSettings:
    """What a PNG's infotext restores: `fields` are SampleRequest field names and values."""

    fields: dict[str, Any]
    lora_hashes: dict[str, str] = field(default_factory=dict)  # LoRA name -> 12-hex short hash (A1111 "Lora hashes")
    model: str | None = None  # `Model` (file name without extension) and `Model hash` (10 hex)
    model_hash: str | None = None
    ti_hashes: dict[str, str] = field(default_factory=dict)  # embedding name -> 12-hex (A1111 "TI hashes")
    vae: str | None = None  # `VAE` (file name without extension) when the image used a separate VAE
    not_restored: list[str] = field(default_factory=list)  # settings in the text this sampler cannot reproduce
    parameters: dict[str, str] = field(default_factory=dict)  # everything parse_parameters read

    def request(self, base=None, **overrides):
        """A SampleRequest: `base`'s folders and other settings, the PNG's values, then `overrides` on top."""
        import dataclasses

        from library.sampling.pipeline import SampleRequest

        base = base if base is not None else SampleRequest(prompt="")
        return dataclasses.replace(base, **{**self.fields, **overrides})


def _number(params: dict[str, str], key: str, kind: type, source: str) -> Any:
    try:
        return kind(float(params[key])) if kind is int else kind(params[key])
    except ValueError:
        raise SamplingError(f"{source}: infotext {key!r} is {params[key]!r}, not a number",
                            ["fix the PNG's parameters text, or give the value as a flag"]) from None


def parse_lora_hashes(text: str) -> dict[str, str]:
    """A1111's `Lora hashes: "name: 0123456789ab, other: ..."` value as {name: hash}."""
    out = {}
    for item in text.split(","):
        name, sep, digest = item.rpartition(":")
        if sep and name.strip():
            out[name.strip()] = digest.strip()
    return out


def settings_from_parameters(params: dict[str, str], source: str = "infotext") -> PngSettings:
    """SampleRequest fields from `parse_parameters`' dict; `source` names the file in errors."""
    from library.sampling.sampler_registry import sampler_from_infotext

    fields: dict[str, Any] = {"prompt": params.get("Prompt", ""), "negative_prompt": params.get("Negative prompt", "")}
    if "Steps" in params:
        fields["steps"] = _number(params, "Steps", int, source)
    if "CFG scale" in params:
        fields["cfg_scale"] = _number(params, "CFG scale", float, source)
    if "Seed" in params:
        fields["seed"] = _number(params, "Seed", int, source)
    if "Size-1" in params:
        fields["width"] = _number(params, "Size-1", int, source)
        fields["height"] = _number(params, "Size-2", int, source)
    fields["clip_skip"] = _number(params, "Clip skip", int, source) if "Clip skip" in params else 1
    if "CFG Rescale" in params:
        fields["guidance_rescale"] = _number(params, "CFG Rescale", float, source)
    if "Sampler" in params:
        try:
            fields["sampler"] = sampler_from_infotext(params["Sampler"], params.get("Schedule type")).name
        except SamplingError as exc:
            raise SamplingError(f"{source}: {exc.summary}", exc.problems) from None
    hires = "Hires upscale" in params or "Hires resize-1" in params
    if hires:
        fields["enable_hr"] = True
        if "Hires upscale" in params:
            fields["hr_scale"] = _number(params, "Hires upscale", float, source)
        if "Hires resize-1" in params:
            fields["hr_resize_x"] = _number(params, "Hires resize-1", int, source)
            fields["hr_resize_y"] = _number(params, "Hires resize-2", int, source)
        fields["hr_second_pass_steps"] = _number(params, "Hires steps", int, source) if "Hires steps" in params else 0
        fields["hr_upscaler"] = params.get("Hires upscaler", "Latent")
        if "Denoising strength" in params:
            fields["denoising_strength"] = _number(params, "Denoising strength", float, source)
    not_restored = [k for k in params if k not in _USED and k not in _INFORMATIONAL]
    if "Denoising strength" in params and not hires:
        not_restored.insert(0, "Denoising strength (an img2img image: give its --init_image to redo it)")
    return PngSettings(fields, lora_hashes=parse_lora_hashes(params.get("Lora hashes", "")), model=params.get("Model"),
                       model_hash=params.get("Model hash"), ti_hashes=parse_lora_hashes(params.get("TI hashes", "")),
                       vae=params.get("VAE"), not_restored=not_restored, parameters=params)


def settings_from_infotext(text: str, source: str = "infotext") -> PngSettings:
    """`settings_from_parameters(parse_parameters(text))`: what a GUI calls with a pasted infotext."""
    return settings_from_parameters(parse_parameters(text), source)


def settings_from_png(path: str | os.PathLike[str]) -> PngSettings:
    """The settings a PNG's `parameters` chunk restores; a clear error naming a PNG without one."""
    return settings_from_infotext(read_png_parameters(path), str(path))


def check_lora_hashes(settings: PngSettings, lora_dir: str | os.PathLike[str] | None, source: str) -> None:
    """Every `<lora:NAME>` in the restored prompt whose `Lora hashes` entry names another file: one error."""
    from library.sampling.lora_stack import lora_short_hash, resolve_lora
    from library.sampling.prompt_parser import extract_lora_tags

    if not settings.lora_hashes:
        return
    _text, tags = extract_lora_tags(settings.fields.get("prompt", ""))
    problems = []
    for tag in tags:
        wanted = settings.lora_hashes.get(tag.name)
        if wanted is None:
            continue
        path = resolve_lora(tag.name, lora_dir)
        found = lora_short_hash(path)
        if found[: len(wanted)].lower() != wanted.lower():
            problems.append(f"<lora:{tag.name}>: {path} has hash {found}, the image was made with {wanted}")
    if problems:
        raise SamplingError(f"{source}: LoRA files differ from the ones the image was made with", problems + [
            "put the original files in --lora_dir, or give --prompt to sample with the files you have"])


def check_embedding_hashes(settings: PngSettings, embeddings_dir: str | os.PathLike[str] | None, source: str) -> None:
    """The infotext's `TI hashes` against the files in --embeddings_dir: a missing or different file is an error.

    Why: without the embedding its name reaches the text encoder as words, and the image silently differs.
    """
    if not settings.ti_hashes:
        return
    if embeddings_dir is None:
        raise SamplingError(f"{source}: the image used textual-inversion embeddings "
                            f"({', '.join(settings.ti_hashes)})", ["pass --embeddings_dir FOLDER holding them"])
    from library.sampling.embeddings import EMBEDDING_SUFFIXES, file_sha256

    root = Path(os.path.expanduser(str(embeddings_dir)))
    files = {p.stem.replace(":", "").replace(",", ""): p for p in sorted(root.rglob("*"), reverse=True)
             if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES} if root.is_dir() else {}
    problems = []
    for name, wanted in settings.ti_hashes.items():
        path = files.get(name)
        if path is None:
            problems.append(f"{name}: no such embedding in {root}")
            continue
        found = file_sha256(str(path), path.stat().st_mtime_ns)[:12]
        if found[: len(wanted)].lower() != wanted.lower():
            problems.append(f"{name}: {path} has hash {found}, the image was made with {wanted}")
    if problems:
        raise SamplingError(f"{source}: embeddings differ from the ones the image was made with", problems + [
            "put the original files in --embeddings_dir, or give --prompt/--negative_prompt to use what you have"])


def resolve_upscaler(name: str, models_dir: str | None) -> str:
    """An infotext's `Hires upscaler` (a model file's stem) as a file in models_dir; built-in names as they are."""
    from library.sampling.hires import LATENT_UPSCALERS
    from library.sampling.lora_stack import resolve_named_file

    if name in LATENT_UPSCALERS or name in ("Lanczos", "None") or Path(name).is_file():
        return name
    if models_dir is None:
        raise SamplingError(f"the image used the upscaler model {name!r}",
                            ["pass --models_dir FOLDER holding it, or --hr_upscaler Latent/Lanczos/FILE"])
    return str(resolve_named_file("upscaler", name, models_dir, (".pth", ".safetensors", ".pt"), "--models_dir"))
