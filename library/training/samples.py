"""Samples during training through library.sampling (the trainer never draws images itself).

Each prompt-file line becomes `<output_dir>/sample/<output_name>_e000001_00_<timestamp>_<seed>.png`
(per-step samples: `_000100_`), as sd-scripts names them. The sampler's noise
comes from the line's seed (or a seed derived from the run's seed and the
line), never from the training generators, so sampling does not change the
training trajectory.
"""
from __future__ import annotations

from typing import Any

from library.errors import SamplingError
from library.training.events import Events
from library.training.placement import module_device, text_encoders_of


class SampleHook:
    def __init__(self, parts: Any, events: Events) -> None:
        self.parts = parts
        self.events = events
        self.lines: list[str] = []
        cfg = parts.config
        if cfg.sample_prompts:
            from library.sampling.training_samples import parse_prompt_line, read_prompt_file

            self.lines = read_prompt_file(cfg.sample_prompts)
            for line in self.lines:
                parse_prompt_line(line)  # a bad line fails now, not after an hour of training

    def maybe(self, *, epoch: int | None, step: int, force: bool = False) -> list[str]:
        """Generate every prompt line's sample now; returns the written paths."""
        if not self.lines or not force:
            return []
        try:
            paths = self._run(epoch, step)
        except SamplingError as exc:
            self.events.on_log({"message": f"samples failed at step {step}: {exc}"})
            paths = []
        except OSError as exc:  # a full or read-only disk: training goes on, its own saves report the disk
            self.events.on_log({"message": f"samples not written at step {step}: {exc.strerror or exc} "
                                           f"({exc.filename or self.parts.config.output_dir})"})
            paths = []
        self.events.on_sample({"epoch": epoch, "step": step, "paths": paths})
        return paths

    def _run(self, epoch: int | None, step: int) -> list[str]:
        from library.sampling.training_samples import sample_for_training, save_training_sample, training_sample_path

        p, cfg = self.parts, self.parts.config
        models = (p.bundle.vae, *text_encoders_of(p.bundle))  # may wait in RAM after caching (training.placement)
        homes = [module_device(m) for m in models]
        for model in models:
            model.to(p.device)
        paths = []
        try:
            for index, line in enumerate(self.lines):
                seed = (p.rng.seed + 1000003 * (index + 1)) % 2**32
                image = sample_for_training(p.bundle, p.network, line, sampler=cfg.sample_sampler, seed=seed,
                                            clip_skip=cfg.clip_skip)
                dest = training_sample_path(cfg.output_dir, cfg.output_name, index, image.seed,
                                            epoch=epoch, step=None if epoch is not None else step)
                paths.append(str(save_training_sample(image, dest)))
        finally:
            for model, home in zip(models, homes):
                model.to(home)
        return paths
