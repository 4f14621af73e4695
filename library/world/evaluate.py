"""Measure what a tiny-world model draws: sample with the bundled sampler, label with the world classifier.

Shared by the learning tests (did the LoRA teach the star? does the base model
draw "a red circle"?) and `bench/eval_tiny_world.py` (prompt-following of a
rebuilt base model), so both judge images the same way.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from library.world.classifier import WorldClassifier, predict

DEFAULT_STEPS = 20
DEFAULT_CFG = 5.0


def sample_images(bundle, prompts: Sequence[str], seeds: Sequence[int], *,
                  loras: tuple[tuple[str, float], ...] = (), steps: int = DEFAULT_STEPS, cfg: float = DEFAULT_CFG,
                  sampler: str = "Euler a", size: int = 64, batch: int = 16) -> np.ndarray:
    """One image per (prompt, seed) pair through library.sampling; uint8 [N, size, size, 3]."""
    from library.sampling.pipeline import ImageJob, SampleRequest, SamplingSession

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    request = SampleRequest(prompt=prompts[0], steps=steps, cfg_scale=cfg, sampler=sampler, width=size,
                            height=size, loras=loras)
    jobs = [ImageJob(seed=int(s), prompt=p, negative_prompt="", text=p, negative_text="", loras=loras)
            for p, s in zip(prompts, seeds)]
    session = SamplingSession(bundle)
    try:
        made = session.run_jobs(request, jobs, max_batch=batch)
    finally:
        session.loras.clear()
    return np.stack([np.asarray(g.image.convert("RGB")) for g in made])


def label_rate(classifier: WorldClassifier, images: np.ndarray, **wanted: str) -> float:
    """Fraction of images whose predicted labels equal every given one, e.g. shape="star", colour="red"."""
    pred = predict(classifier, images)
    ok = np.ones(len(images), dtype=bool)
    for head, value in wanted.items():
        ok &= np.array([p == value for p in pred[head]])
    return float(ok.mean())
