"""Regularization images generated with the base model through the bundled sampler.

Image ``i`` of a set is ``<dest>/<repeats>_<class>/<i:05d>.png``, sampled with
seed ``seed + i`` (A1111's convention for consecutive images), so every image
depends only on the settings and its index. That makes the set resumable: a run
stopped after image 37 of 200 leaves 37 images on disk (each written
atomically, so none half-written), and the next run generates only the missing
ones, from image 38 on, giving the same files an uninterrupted run would. Each PNG carries its generation
parameters in the ``parameters`` text chunk (A1111's infotext, which A1111's
"PNG Info" tab and lorasmith read back), and the set's settings are kept in
``.reg_generation.json`` beside the images; a re-run with different settings is
refused instead of mixing two sets, unless asked to start over.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from library.errors import DatasetError
from library.fileio import atomic_write_text
from library.sampling.infotext import save_png

MANIFEST = ".reg_generation.json"


@dataclass(frozen=True)
class GenerationSettings:
    """What defines a generated set; every image shares these, only the seed changes."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 30
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    seed: int = 0
    clip_skip: int = 1
    model: str = ""
    model_hash: str = ""


# (image, A1111 parameters text) for each seed; the bundled sampler in practice, anything in tests.
Rendered = tuple[Image.Image, str]
Render = Callable[[GenerationSettings, list[int]], list[Rendered]]


def sample_request(settings: GenerationSettings, first_seed: int, count: int):
    """The library.sampling request for `count` consecutive seeds from `first_seed`."""
    from library.sampling.pipeline import SampleRequest

    return SampleRequest(prompt=settings.prompt, negative_prompt=settings.negative_prompt, steps=settings.steps,
                         cfg_scale=settings.cfg_scale, sampler=settings.sampler, width=settings.width,
                         height=settings.height, seed=first_seed, batch_size=count, clip_skip=settings.clip_skip)


def sampler_render(bundle, settings: GenerationSettings) -> Render:
    """A Render on the bundled sampler; checks the settings before any image is made."""
    from library.sampling.pipeline import SamplingSession, validate_request

    validate_request(sample_request(settings, settings.seed, 1))
    session = SamplingSession(bundle)

    def render(settings: GenerationSettings, seeds: list[int]) -> list[Rendered]:
        images = session.generate(sample_request(settings, seeds[0], len(seeds)))
        return [(g.image, g.parameters) for g in images]

    return render


def with_model_facts(settings: GenerationSettings, bundle) -> GenerationSettings:
    """Record which base model made the set (name and hash), so a re-run with another model is refused."""
    return replace(settings, model=bundle.facts.name, model_hash=bundle.facts.model_hash)


def image_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.png"


def missing_indices(folder: Path, count: int) -> list[int]:
    """Indices in 0..count-1 whose image is not on disk yet, in order."""
    return [i for i in range(count) if not image_path(folder, i).is_file()]


def consecutive_runs(indices: list[int], max_len: int) -> list[list[int]]:
    """[0,1,2,5,6] with max 2 -> [[0,1],[2],[5,6]]: runs share one batch of consecutive seeds."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1 and len(runs[-1]) < max_len:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


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
                 render: Render, repeats: int = 1, batch_size: int = 1, overwrite: bool = False,
                 progress: bool = True) -> GenerationResult:
    """Generate the missing images of a `count`-image set into `<dest>/<repeats>_<class>/`."""
    if count < 1 or repeats < 1 or batch_size < 1:
        raise DatasetError(f"need at least 1 image, repeat and batch, got {count}, {repeats}, {batch_size}")
    if not class_prompt.strip() or "/" in class_prompt or "\\" in class_prompt:
        raise DatasetError(f"class prompt {class_prompt!r} cannot name a folder", ["give the class, e.g. 'woman'"])
    folder = Path(dest) / f"{repeats}_{class_prompt.strip()}"
    folder.mkdir(parents=True, exist_ok=True)
    _check_manifest(folder, settings, overwrite)
    atomic_write_text(folder / MANIFEST, json.dumps({"count": count, "settings": asdict(settings)}, indent=2) + "\n")
    todo = list(range(count)) if overwrite else missing_indices(folder, count)
    result = GenerationResult(folder, already_done=count - len(todo))
    bar = tqdm(total=count, initial=result.already_done, desc="reg generate", unit="img", disable=not progress)
    for run in consecutive_runs(todo, batch_size):
        rendered = render(settings, [settings.seed + i for i in run])
        for index, (image, parameters) in zip(run, rendered):
            result.written.append(save_png(image, image_path(folder, index), parameters))
        bar.update(len(run))
    bar.close()
    return result
