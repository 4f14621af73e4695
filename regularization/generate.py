"""Regularization images generated with the base model through the bundled sampler.

Image ``i`` of a set is ``<dest>/<repeats>_<class>/<i:05d>.png``, sampled with
seed ``seed + i`` (A1111's convention for consecutive images), so every image
depends only on the settings and its index. That makes the set resumable: a run
stopped at image 37 of 200 leaves 0..36 on disk, and the next run generates the
missing indices only (38 onwards, and 37 if it was not finished), giving the
same files an uninterrupted run would. Each PNG carries its generation
parameters in the ``parameters`` text chunk (A1111's infotext, which A1111's
"PNG Info" tab and lorasmith read back), and the set's settings are kept in
``.reg_generation.json`` beside the images; a re-run with different settings is
refused instead of mixing two sets, unless asked to start over.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, PngImagePlugin
from tqdm import tqdm

from library.errors import DatasetError
from library.fileio import atomic_path, atomic_write_text

MANIFEST = ".reg_generation.json"


@dataclass(frozen=True)
class GenerationSettings:
    """What defines a generated set; every image shares these, only the seed changes."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    seed: int = 0
    clip_skip: int | None = None
    model: str = ""
    model_hash: str = ""


@dataclass(frozen=True)
class ImageJob:
    index: int
    seed: int
    settings: GenerationSettings


# Turns one job into an image (the bundled sampler in practice; anything in tests).
Render = Callable[[ImageJob], Image.Image]


def infotext(job: ImageJob) -> str:
    """A1111's parameters text: prompt, negative prompt, then 'Key: value' pairs."""
    s = job.settings
    lines = [s.prompt]
    if s.negative_prompt:
        lines.append(f"Negative prompt: {s.negative_prompt}")
    pairs = [("Steps", s.steps), ("Sampler", s.sampler), ("CFG scale", s.cfg_scale), ("Seed", job.seed),
             ("Size", f"{s.width}x{s.height}")]
    if s.model_hash:
        pairs.append(("Model hash", s.model_hash[:10]))
    if s.model:
        pairs.append(("Model", s.model))
    if s.clip_skip and s.clip_skip > 1:
        pairs.append(("Clip skip", s.clip_skip))
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs))
    return "\n".join(lines)


def image_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.png"


def missing_indices(folder: Path, count: int) -> list[int]:
    """Indices in 0..count-1 whose image is not on disk yet, in order."""
    return [i for i in range(count) if not image_path(folder, i).is_file()]


@dataclass
class GenerationResult:
    folder: Path
    written: list[Path] = field(default_factory=list)
    already_done: int = 0


def _check_manifest(folder: Path, settings: GenerationSettings, overwrite: bool) -> None:
    """Refuse to extend a set made with other settings (the images would not belong together)."""
    path = folder / MANIFEST
    if not path.is_file() or overwrite:
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}", ["delete it, or pass --overwrite to start over"]) from exc
    saved_settings = saved.get("settings", {})
    differs = [f"{k}: {saved_settings.get(k)!r} on disk, {v!r} now" for k, v in asdict(settings).items()
               if saved_settings.get(k) != v]
    if differs:
        raise DatasetError(f"{folder} holds a set generated with other settings", differs + [
            "use the same settings to continue it, another destination, or --overwrite to start over"])


def generate_set(dest: str | os.PathLike[str], class_prompt: str, count: int, settings: GenerationSettings,
                 render: Render, repeats: int = 1, overwrite: bool = False, progress: bool = True) -> GenerationResult:
    """Generate the missing images of a `count`-image set into `<dest>/<repeats>_<class>/`."""
    if count < 1 or repeats < 1:
        raise DatasetError(f"need at least 1 image and 1 repeat, got {count} images, {repeats} repeats")
    if not class_prompt.strip() or "/" in class_prompt or "\\" in class_prompt:
        raise DatasetError(f"class prompt {class_prompt!r} cannot name a folder", ["give the class, e.g. 'woman'"])
    folder = Path(dest) / f"{repeats}_{class_prompt.strip()}"
    folder.mkdir(parents=True, exist_ok=True)
    _check_manifest(folder, settings, overwrite)
    atomic_write_text(folder / MANIFEST, json.dumps({"count": count, "settings": asdict(settings)}, indent=2) + "\n")
    todo = list(range(count)) if overwrite else missing_indices(folder, count)
    result = GenerationResult(folder, already_done=count - len(todo))
    bar = tqdm(total=count, initial=result.already_done, desc="reg generate", unit="img", disable=not progress)
    for index in todo:
        job = ImageJob(index, settings.seed + index, settings)
        image = render(job)
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", infotext(job))
        out = image_path(folder, index)
        with atomic_path(out) as tmp:
            image.save(tmp, format="PNG", pnginfo=info)
        result.written.append(out)
        bar.update(1)
    bar.close()
    return result


def with_model_facts(settings: GenerationSettings, bundle) -> GenerationSettings:
    """Record which base model made the set (name and hash, as A1111 writes them)."""
    return dataclasses.replace(settings, model=bundle.facts.name, model_hash=bundle.facts.model_hash)
