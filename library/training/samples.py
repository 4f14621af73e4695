"""Samples during training, through library.sampling's entry point.

The trainer never draws images itself. When `library.sampling` provides
`sample_for_training`, it is called with the run's modules; until then the
trainer reports once that samples are skipped.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch

from library.errors import SamplingError
from library.training.events import Events


def sampling_entry() -> Any | None:
    """`library.sampling.sample_for_training` if the sampler has landed, else None."""
    try:
        module = importlib.import_module("library.sampling")
    except ImportError:
        return None
    return getattr(module, "sample_for_training", None)


class SampleHook:
    def __init__(self, parts: Any, events: Events) -> None:
        self.parts = parts
        self.events = events
        self.entry = sampling_entry() if parts.config.sample_prompts else None
        self.warned = False

    def maybe(self, *, epoch: int | None, step: int, force: bool = False) -> list[str]:
        """Generate the prompt file's samples now; returns the written paths."""
        cfg = self.parts.config
        if not cfg.sample_prompts or not force:
            return []
        if self.entry is None:
            if not self.warned:
                self.events.on_log({"message": "samples skipped: library.sampling has no sample_for_training yet"})
                self.warned = True
            return []
        return self._run(epoch, step)

    def _run(self, epoch: int | None, step: int) -> list[str]:
        p = self.parts
        vae_device = next(p.bundle.vae.parameters()).device
        p.bundle.vae.to(p.device)
        was_training = p.network.training
        p.network.eval()
        try:
            with torch.no_grad():
                paths = self.entry(bundle=p.bundle, config=p.config, epoch=epoch, step=step, device=p.device)
        except SamplingError as exc:
            self.events.on_log({"message": f"samples failed at step {step}: {exc}"})
            paths = []
        finally:
            p.network.train(was_training)
            p.bundle.vae.to(vae_device)
        paths = [str(x) for x in (paths or [])]
        self.events.on_sample({"epoch": epoch, "step": step, "paths": paths})
        return paths
