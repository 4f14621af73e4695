"""Every random source of a run, seeded from one number and saveable as one dict.

The training noise (ε, timesteps, offsets, VAE sampling) comes from one
explicit generator on the training device; LoRA dropout uses torch's global
RNG; the data order needs no state at all (the dataset derives it from seed,
epoch and batch index). `state_dict`/`load_state_dict` capture all of it, so a
saved state can continue the exact trajectory.
"""
from __future__ import annotations

import random
import secrets
from typing import Any

import numpy as np
import torch


def pick_seed(seed: int | None) -> int:
    """The configured seed, or a fresh random one (which is then reported and stored)."""
    return int(seed) if seed is not None else secrets.randbelow(2**31)


class TrainingRNG:
    def __init__(self, seed: int, device: torch.device) -> None:
        self.seed = seed
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.noise = torch.Generator(device=device)
        self.noise.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "seed": self.seed,
            "noise": self.noise.get_state(),
            "noise_device": str(self.noise.device),
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.noise.set_state(state["noise"])
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
