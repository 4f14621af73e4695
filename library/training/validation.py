"""The validation loss on held-out images (--validation_split), with sd-scripts' semantics.

Facts from sd-scripts `train_network.py`: each validation runs every held-out batch
(at most `--max_validation_steps`) at 4 fixed timesteps, `np.linspace(min_timestep,
max_timestep, 6, dtype=int)[1:-1]` (200, 400, 600, 800 for the full schedule), with
the noise drawn after reseeding from `--validation_seed` (the training seed when
unset), the network in eval mode and no gradient; the training RNG is left as it
was. It runs after every `--validate_every_n_steps` optimizer steps and at the end of
every epoch (every `--validate_every_n_epochs`th when set). The value is the mean
over (batch, timestep) losses; TensorBoard tags are `loss/validation/step_average`
and `loss/validation/step_divergence` (x = global step), `loss/validation/epoch_average`
and `loss/validation/epoch_divergence` (x = epoch); divergence = validation loss −
the training loss's moving average.

Here the noise comes from a generator of its own, seeded afresh for every
validation, so two validations of the same weights give the same number, and the
losses stay on the device until one read-back per validation (no host sync per batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from library.scoring.timesteps import validation_timesteps
from library.training.noise import timestep_range
from library.training.placement import text_encoders_of


def validation_batch_count(available: int, max_validation_steps: int | None) -> int:
    """Batches one validation runs: all held-out batches, or at most `--max_validation_steps`."""
    return available if max_validation_steps is None else min(max_validation_steps, available)


def should_validate_epoch(epoch: int, every_n_epochs: int | None) -> bool:
    """sd-scripts: every epoch unless --validate_every_n_epochs is set (epoch counts from 1)."""
    return epoch % every_n_epochs == 0 if every_n_epochs else True


def should_validate_step(step: int, every_n_steps: int | None) -> bool:
    """sd-scripts: after optimizer step N, 2N, … only when --validate_every_n_steps is set."""
    return bool(every_n_steps) and step % every_n_steps == 0


@dataclass
class ValidationResult:
    loss: float  # mean of `losses`
    losses: list[float]  # one per (batch, timestep), batch-major
    batches: int
    timesteps: list[int]


class Validator:
    """Measures the validation loss of the run's current weights on its held-out dataset."""

    def __init__(self, parts: Any, step_math: Any) -> None:
        cfg = parts.config
        self.parts = parts
        self.math = step_math
        self.dataset = parts.val_dataset
        self.seed = int(cfg.validation_seed if cfg.validation_seed is not None else parts.rng.seed)
        low, high = timestep_range(step_math.noise, int(parts.alphas_cumprod.shape[0]))
        self.timesteps = validation_timesteps(low, high)
        available = len(self.dataset) if self.dataset is not None else 0
        self.batches = validation_batch_count(available, cfg.max_validation_steps)

    @property
    def enabled(self) -> bool:
        return self.batches > 0

    def evaluate(self) -> ValidationResult:
        """The loss at fixed noise and timesteps, eval mode, no gradient; train modes restored after."""
        p = self.parts
        modules = [m for m in (p.network, p.bundle.unet, *text_encoders_of(p.bundle)) if m is not None]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        gen = torch.Generator(device=p.device)
        gen.manual_seed(self.seed)
        losses: list[torch.Tensor] = []
        try:
            with torch.no_grad():
                for index in range(self.batches):
                    batch = self.dataset[(1, index)]  # a fixed epoch: the same batches, captions and order each time
                    losses.extend(self.math.loss(batch, t, gen).detach().float().reshape(()) for t in self.timesteps)
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
        values = torch.stack(losses).cpu().tolist()  # the one read-back of this validation
        return ValidationResult(sum(values) / len(values), values, self.batches, list(self.timesteps))
