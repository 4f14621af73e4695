"""In-training samples: sd-scripts prompt-file lines through the bundled sampler.

A prompt line is ``text --n negative --w 512 --h 768 --d 42 --l 7.5 --s 28 --ss euler_a``
(sd-scripts `line_to_prompt_dict`: options split on " --", matched case-insensitively;
unknown options are reported, not silently dropped). Defaults are sd-scripts':
512x512, 30 steps, CFG 7.5, a random seed. The trainer calls `sample_for_training`
with its network already applied; samples never change the network or the model.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from library.errors import SamplingError
from library.sampling.infotext import save_png
from library.sampling.pipeline import (
    GeneratedImage,
    SampleRequest,
    SamplingSession,
    plan_jobs,
    validate_request,
)
from library.sampling.prompt_parser import extract_lora_tags

_OPTIONS: dict[str, tuple[str, type]] = {
    "n": ("negative_prompt", str), "w": ("width", int), "h": ("height", int), "d": ("seed", int),
    "l": ("cfg_scale", float), "s": ("steps", int), "ss": ("sampler", str),
}
DEFAULTS: dict[str, Any] = {"negative_prompt": "", "width": 512, "height": 512, "seed": None,
                            "cfg_scale": 7.5, "steps": 30, "sampler": None}


def parse_prompt_line(line: str) -> dict[str, Any]:
    """One prompt-file line → {'prompt', 'negative_prompt', 'width', 'height', 'seed', 'cfg_scale', 'steps', 'sampler'}."""
    parts = line.strip().split(" --")
    out: dict[str, Any] = dict(DEFAULTS, prompt=parts[0].strip())
    problems = []
    for part in parts[1:]:
        m = re.match(r"(\w+)\s+(.+)", part.strip(), re.DOTALL)
        key = m.group(1).lower() if m else part.strip()
        if not m or key not in _OPTIONS:
            problems.append(f"--{part.strip()}: unknown option (use --n --w --h --d --l --s --ss)")
            continue
        field, kind = _OPTIONS[key]
        try:
            out[field] = kind(m.group(2).strip())
        except ValueError:
            problems.append(f"--{key} {m.group(2).strip()!r}: expected {'a whole number' if kind is int else 'a number'}")
    if out["steps"] is not None:
        out["steps"] = max(1, min(1000, out["steps"]))
    if problems:
        raise SamplingError(f"sample prompt line {line.strip()[:60]!r} has problems", problems)
    return out


def read_prompt_file(path: str | os.PathLike[str]) -> list[str]:
    """Non-empty, non-comment lines of a .txt prompt file."""
    p = Path(path)
    if not p.is_file():
        raise SamplingError(f"sample_prompts: {p} does not exist", ["give a text file with one prompt per line"])
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


# sd-scripts' .json / .toml prompt entries use these keys
_ENTRY_KEYS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "width": "width", "height": "height",
               "seed": "seed", "scale": "cfg_scale", "sample_steps": "steps", "sample_sampler": "sampler"}


def read_prompt_entries(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Prompt entries (parse_prompt_line's dicts) from a .txt, .json (list of objects) or .toml ([[prompt]]) file."""
    p = Path(path)
    if p.suffix.lower() not in (".json", ".toml"):
        return [parse_prompt_line(line) for line in read_prompt_file(p)]
    if not p.is_file():
        raise SamplingError(f"sample_prompts: {p} does not exist")
    import json
    import tomllib

    try:
        data = json.loads(p.read_text(encoding="utf-8")) if p.suffix.lower() == ".json" else tomllib.loads(
            p.read_text(encoding="utf-8")).get("prompt", [])
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SamplingError(f"sample_prompts: {p} cannot be read: {exc}") from None
    entries = []
    for i, item in enumerate(data if isinstance(data, list) else []):
        unknown = sorted(set(item) - set(_ENTRY_KEYS))
        if unknown or "prompt" not in item:
            raise SamplingError(f"sample_prompts: {p} entry {i + 1} has unknown keys {unknown} or no 'prompt'",
                                [f"known keys: {', '.join(_ENTRY_KEYS)}"])
        entries.append(dict(DEFAULTS, **{_ENTRY_KEYS[k]: v for k, v in item.items()}))
    return entries


@contextmanager
def _eval_mode(*modules: torch.nn.Module | None) -> Iterator[None]:
    modes = [(m, m.training) for m in modules if m is not None]
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for m, was_training in modes:
            m.train(was_training)


def _text_encoders(bundle) -> list[torch.nn.Module]:
    """te1 and, for SDXL, te2: both go to eval mode while sampling."""
    return [m for m in (bundle.text_encoder, getattr(bundle, "text_encoder_2", None)) if m is not None]


def sample_for_training(bundle, network, prompt_line: str | dict[str, Any], *, sampler: str = "ddim",
                        seed: int | None = None, clip_skip: int | None = None) -> GeneratedImage:
    """One sample image for a prompt line (or a read_prompt_entries dict), with the network as it is now.

    `<lora:...>` tags in the line are dropped: the network being trained is the LoRA.
    A line's --ss overrides `sampler`, its --d overrides `seed`.
    """
    opts = parse_prompt_line(prompt_line) if isinstance(prompt_line, str) else prompt_line
    text, _tags = extract_lora_tags(opts["prompt"])
    picked_seed = opts["seed"] if opts["seed"] is not None else seed
    request = SampleRequest(
        prompt=text, negative_prompt=opts["negative_prompt"], steps=opts["steps"], cfg_scale=opts["cfg_scale"],
        sampler=opts["sampler"] or sampler, width=opts["width"], height=opts["height"],
        seed=-1 if picked_seed is None else picked_seed, clip_skip=clip_skip or 1,
    )
    validate_request(request)
    session = SamplingSession(bundle)
    _base, jobs = plan_jobs(request)
    with _eval_mode(bundle.unet, *_text_encoders(bundle), bundle.vae, network), torch.no_grad():
        return session.run_jobs(request, jobs)[0]


def training_sample_path(output_dir: str | os.PathLike[str], output_name: str | None, index: int, seed: int,
                         epoch: int | None = None, step: int | None = None) -> Path:
    """sd-scripts' name: <output_dir>/sample/<name>_e000003_00_<timestamp>_<seed>.png (or _000120_ for steps)."""
    number = f"e{epoch:06d}" if epoch is not None else f"{int(step or 0):06d}"
    prefix = f"{output_name}_" if output_name else ""
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime())
    return Path(output_dir) / "sample" / f"{prefix}{number}_{index:02d}_{stamp}_{seed}.png"


def save_training_sample(image: GeneratedImage, path: str | os.PathLike[str]) -> Path:
    return save_png(image.image, path, image.parameters)


def sample_from_config(config: Any, bundle, network, *, epoch: int | None = None, step: int | None = None
                       ) -> list[Path]:
    """All prompts of `config.sample_prompts`, saved under output_dir/sample with sd-scripts' names.

    Reads sample_prompts, sample_sampler, seed, clip_skip, output_dir and output_name from a
    TrainConfig. A prompt without --d gets config.seed + its index (when a seed is set), so
    samples of different epochs are comparable.
    """
    if not getattr(config, "sample_prompts", None):
        return []
    paths = []
    base_seed = getattr(config, "seed", None)
    for i, entry in enumerate(read_prompt_entries(config.sample_prompts)):
        image = sample_for_training(bundle, network, entry, sampler=getattr(config, "sample_sampler", None) or "ddim",
                                    seed=None if base_seed is None else base_seed + i,
                                    clip_skip=getattr(config, "clip_skip", None))
        path = training_sample_path(config.output_dir, getattr(config, "output_name", None), i, image.seed,
                                    epoch=epoch, step=step)
        paths.append(save_training_sample(image, path))
    return paths
