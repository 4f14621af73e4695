"""`--evaluate_every_n_epochs`: score the LoRA at its epoch saves, as `lorasmith evaluate` would.

The run's own network is scored in place (library.scoring.scores.score_network:
its multiplier set to 0 for the base model, then to each weight), on the held-out
images when there is a validation split, else on the training images, from the
latents the run already cached. Values go to TensorBoard as
`evaluation/fidelity/w<weight>` and `evaluation/drift/w<weight>` (x = epoch) and to
the log; the running recommendation is logged after each scoring. SDXL runs are scored
with the step's conditioning (library.data.text_conditioning): both encoders, the pooled
embedding and each image's size/crop ids.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from library.training.events import Events
from library.training.placement import text_encoders_of


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


class EpochScoreHook:
    def __init__(self, parts: Any, events: Events, tb: Any) -> None:
        self.parts = parts
        self.events = events
        self.tb = tb
        self.every = parts.config.evaluate_every_n_epochs
        self.scores: list = []
        self.done: set[int] = set()
        self._eval_set = None
        self.seconds: list[float] = []

    def maybe(self, epoch: int, path: Path) -> list:
        if not self.every or epoch % self.every != 0 or epoch in self.done:
            return []
        self.done.add(epoch)
        from library.scoring.scores import recommend, score_network, tensorboard_values

        p = self.parts
        models = (p.bundle.vae, *text_encoders_of(p.bundle))  # may wait in RAM after caching (training.placement)
        homes = [module_device(m) for m in models]
        start = time.perf_counter()
        try:
            for model in models:
                model.to(p.device)
            eval_set = self._set()
            autocast = p.device.type == "cuda" and p.weight_dtype != torch.float32
            with torch.autocast(p.device.type, dtype=p.weight_dtype, enabled=autocast):
                scores = score_network(p.bundle, p.network, eval_set, file=str(path), epoch=epoch,
                                       progress=lambda done, total, what: self.events.on_progress(
                                           {"what": f"scoring epoch {epoch}", "done": done, "total": total}))
        finally:
            for model, home in zip(models, homes):
                model.to(home)
        self.seconds.append(time.perf_counter() - start)
        self.scores.extend(scores)
        self.tb.scalars(tensorboard_values(scores).get(epoch, {}), epoch)
        line = ", ".join(f"w{s.weight:g} fidelity {s.fidelity:.3f} drift {s.drift:.3f}" for s in scores)
        rec = recommend(self.scores)
        # The scores ride along as data: the GUI shows the table, chart and recommendation from them.
        self.events.on_log({"message": f"epoch {epoch} score ({self.seconds[-1]:.1f} s): {line}; "
                                       f"so far: {rec.why}",
                            "scores": [s.to_dict() for s in scores], "recommendation": rec.to_dict()})
        return scores

    def _set(self):
        if self._eval_set is None:
            from library.scoring.eval_set import (
                eval_set_from_config,
                eval_set_from_dataset,
            )

            p = self.parts
            seed = int(p.config.validation_seed if p.config.validation_seed is not None else p.rng.seed)
            scale = float(getattr(p.bundle.vae.config, "scaling_factor", 0.18215))
            held = p.val_dataset is not None
            self._eval_set = eval_set_from_dataset(p.val_dataset if held else p.dataset, scale, seed=seed,
                                                   source="held-out images" if held else "training images")
            if held and self._eval_set is not None:  # reg folders are never split: their drift from the training set
                train_set = eval_set_from_dataset(p.dataset, scale, seed=seed)
                self._eval_set.reg = train_set.reg if train_set is not None else []
            if self._eval_set is None:  # latents not cached: encode the images once
                self._eval_set = eval_set_from_config(p.bundle, p.config, seed=seed)
            # captions encoded as the run encodes them (SDXL: both encoders, pooled, size ids per image)
            self._eval_set.clip_skip = p.config.clip_skip
            self._eval_set.max_token_length = p.config.max_token_length
        return self._eval_set
