"""The fixed timesteps a loss is measured at, so two measurements of the same weights agree.

Shared by the training run's validation loss (library.training.validation) and the
epoch scores (library.scoring.scores): both follow sd-scripts' rule.
"""
from __future__ import annotations

import numpy as np

NUM_VALIDATION_TIMESTEPS = 4  # sd-scripts' fixed count


def validation_timesteps(low: int, high: int, count: int = NUM_VALIDATION_TIMESTEPS) -> list[int]:
    """`count` timesteps spread evenly inside [low, high), ends excluded (sd-scripts: linspace(...)[1:-1])."""
    return [int(t) for t in np.linspace(low, high, count + 2, dtype=int)[1:-1]]
