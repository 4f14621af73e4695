"""Learning-rate schedules as pure step → multiplier functions.

The formulas are the ones diffusers' `get_scheduler` implements (and so the
ones sd-scripts users know); writing them as pure functions lets the tests
check values and lets the trainer restore a schedule from a step number.
The multiplier for optimizer step s is applied after s scheduler steps, so the
first logged lr with 4 warm-up steps is lr/4, as in sd-scripts.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from library.config import parse_key_value_args
from library.errors import ConfigError

Schedule = Callable[[int], float]


def warmup_steps(lr_warmup_steps: float, total_steps: int) -> int:
    """A count, or a fraction of all steps when below 1 (sd-scripts' ratio rule)."""
    if 0 < lr_warmup_steps < 1:
        return int(lr_warmup_steps * total_steps)
    return int(lr_warmup_steps)


def _warm(step: int, warmup: int) -> float:
    return step / max(1, warmup)


def constant(step: int, warmup: int, total: int) -> float:
    return 1.0


def constant_with_warmup(step: int, warmup: int, total: int) -> float:
    return _warm(step, warmup) if step < warmup else 1.0


def linear(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return _warm(step, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def cosine(step: int, warmup: int, total: int, num_cycles: float = 0.5) -> float:
    """Half a cosine from 1 to 0 after warm-up (SGDR, Loshchilov & Hutter 2017, without restarts)."""
    if step < warmup:
        return _warm(step, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))


def cosine_with_restarts(step: int, warmup: int, total: int, num_cycles: int = 1) -> float:
    """Cosine with hard restarts (SGDR, Loshchilov & Hutter 2017): `num_cycles` decays to 0."""
    if step < warmup:
        return _warm(step, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0))))


def polynomial(step: int, warmup: int, total: int, power: float = 1.0, lr_init: float = 1.0,
               lr_end: float = 1e-7) -> float:
    """Polynomial decay from lr_init to lr_end, returned as a multiplier of lr_init."""
    if step < warmup:
        return _warm(step, warmup)
    if step > total:
        return lr_end / lr_init
    remaining = 1.0 - (step - warmup) / max(1, total - warmup)
    return ((lr_init - lr_end) * remaining ** power + lr_end) / lr_init


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    warmup: int
    total: int
    num_cycles: int = 1
    power: float = 1.0
    lr_init: float = 1.0
    lr_end: float = 1e-7

    def multiplier(self, step: int) -> float:
        w, t = self.warmup, self.total
        if self.name == "constant":
            return constant(step, w, t)
        if self.name == "constant_with_warmup":
            return constant_with_warmup(step, w, t)
        if self.name == "linear":
            return linear(step, w, t)
        if self.name == "cosine":
            return cosine(step, w, t)
        if self.name == "cosine_with_restarts":
            return cosine_with_restarts(step, w, t, self.num_cycles)
        if self.name == "polynomial":
            return polynomial(step, w, t, self.power, self.lr_init, self.lr_end)
        raise ConfigError(f"lr_scheduler: {self.name!r} is unknown",
                          ["use constant, constant_with_warmup, cosine, cosine_with_restarts, polynomial or linear"])


def schedule_spec(name: str, lr_warmup_steps: float, total_steps: int, num_cycles: int = 1,
                  power: float = 1.0, lr_init: float = 1.0, scheduler_args: list[str] | None = None) -> ScheduleSpec:
    """The schedule of a run; `lr_scheduler_args` may set lr_end (polynomial)."""
    extra = parse_key_value_args(scheduler_args or [], "lr_scheduler_args")
    unknown = sorted(set(extra) - {"lr_end"})
    if unknown:
        raise ConfigError(f"lr_scheduler_args: {', '.join(unknown)} not understood", ["only lr_end=<float> (polynomial) is supported"])
    lr_end = float(extra.get("lr_end", 1e-7))
    if name == "polynomial" and not lr_init > lr_end:
        raise ConfigError(f"lr_scheduler polynomial: learning_rate {lr_init} must be above lr_end {lr_end}")
    spec = ScheduleSpec(name=name, warmup=warmup_steps(lr_warmup_steps, total_steps), total=total_steps,
                        num_cycles=num_cycles, power=power, lr_init=lr_init, lr_end=lr_end)
    spec.multiplier(0)  # unknown names fail here, before training
    return spec


def make_lr_scheduler(optimizer: torch.optim.Optimizer, spec: ScheduleSpec) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping `spec`; its state is only `last_epoch`, so it resumes from a step count."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, spec.multiplier)


def make_adafactor_scheduler(optimizer: torch.optim.Optimizer, initial_lr: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Adafactor with relative_step computes its own lr; this scheduler only reports it (sd-scripts' 'adafactor:<lr>')."""
    from transformers.optimization import AdafactorSchedule

    return AdafactorSchedule(optimizer, initial_lr)
