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


def sample_for_training(bundle, network, prompt_line: str, *, sampler: str = "ddim", seed: int | None = None,
                        clip_skip: int | None = None) -> GeneratedImage:
    """One sample image for a prompt line, with the trainer's network as it is right now.

    `<lora:...>` tags in the line are dropped: the network being trained is the LoRA.
    A line's --ss overrides `sampler`, its --d overrides `seed`.
    """
    opts = parse_prompt_line(prompt_line)
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
    with _eval_mode(bundle.unet, bundle.text_encoder, bundle.vae, network), torch.no_grad():
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
