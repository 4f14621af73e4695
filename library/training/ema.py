"""An exponential moving average (EMA) of the LoRA weights, saved beside each LoRA file.

Why: the weights at the end of an epoch carry the noise of the last few steps; their
average over the last ~1/(1-decay) steps is often a cleaner LoRA (Polyak & Juditsky 1992;
the EMA every diffusion model ships). Conventions follow OneTrainer's EMAModuleWrapper:
a `decay` (OneTrainer default 0.999), an update interval in optimizer steps, and a decay
warm-up `min(decay, (1 + t) / (10 + t))` at optimizer step t, so the random start fades fast.

The shadow weights are fp32 on the parameters' device, keyed like the network's state
dict, so an EMA file has exactly the keys of the normal file. Parameters the optimizer
never changes stay bit-equal in the average (`lerp` adds w·(x − ema) = 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

EMA_SUFFIX = "-ema"


def ema_decay_at(decay: float, step: int, warmup: bool) -> float:
    """The decay used after optimizer step `step` (1-based): OneTrainer's warm-up min(d, (1+t)/(10+t))."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def should_update(step: int, every: int) -> bool:
    """Update after optimizer steps every, 2·every, … (step counts from 1)."""
    return step % every == 0


@torch.no_grad()
def ema_update(shadow: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """shadow ← decay·shadow + (1 − decay)·param, in place (computed as shadow + (1 − decay)·(param − shadow)).

    One foreach call over every tensor (a LoRA has hundreds of small ones; per-tensor calls cost more).
    """
    if len(shadow) != len(params):
        raise ValueError(f"{len(shadow)} EMA tensors for {len(params)} parameters")
    if shadow:
        torch._foreach_lerp_(shadow, [p.detach().to(s.dtype) for s, p in zip(shadow, params)], 1.0 - decay)


def ema_file_path(path: Path) -> Path:
    """`t-000003.safetensors` -> `t-000003-ema.safetensors`; `t.safetensors` -> `t-ema.safetensors`."""
    return path.with_name(path.stem + EMA_SUFFIX + path.suffix)


def ema_metadata(metadata: dict[str, str], decay: float, every: int, warmup: bool, updates: int) -> dict[str, str]:
    """The normal file's metadata plus what says this file is an EMA and how it was made."""
    out = dict(metadata)
    out.update({"lorasmith_ema": "true", "lorasmith_ema_decay": repr(float(decay)),
                "lorasmith_ema_update_every": str(int(every)), "lorasmith_ema_warmup": str(bool(warmup)),
                "lorasmith_ema_updates": str(int(updates))})
    if out.get("modelspec.title"):
        out["modelspec.title"] = out["modelspec.title"] + " (EMA)"
    return out


@dataclass
class EmaSettings:
    decay: float
    every: int = 1
    warmup: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> EmaSettings | None:
        if cfg.ema_decay is None:
            return None
        return cls(float(cfg.ema_decay), int(cfg.ema_update_every), bool(cfg.ema_warmup))


class LoraEMA:
    """The shadow copy of a network's trainable parameters and its update rule."""

    def __init__(self, network: torch.nn.Module, settings: EmaSettings) -> None:
        self.settings = settings
        named = [(n, p) for n, p in network.named_parameters() if p.requires_grad and p.is_floating_point()]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shadow = [p.detach().to(torch.float32).clone() for p in self.params]
        self.updates = 0

    def after_step(self, step: int) -> bool:
        """Fold the parameters in after optimizer step `step`; True when this step updated the average."""
        if not should_update(step, self.settings.every):
            return False
        ema_update(self.shadow, self.params, ema_decay_at(self.settings.decay, step, self.settings.warmup))
        self.updates += 1
        return True

    def tensors(self, network: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The network's state dict with the averaged weights in place of the trained ones (same keys)."""
        out = dict(network.state_dict())
        for name, value in zip(self.names, self.shadow):
            out[name] = value.to(out[name].dtype) if out[name].dtype != value.dtype else value
        return out

    def metadata(self, metadata: dict[str, str]) -> dict[str, str]:
        s = self.settings
        return ema_metadata(metadata, s.decay, s.every, s.warmup, self.updates)

    # -- resume ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a state folder keeps (inside train_state.pt): the fp32 shadow on the CPU and the update count."""
        return {"updates": self.updates, "tensors": {n: s.detach().cpu().clone() for n, s in zip(self.names, self.shadow)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        problems = ema_state_problems(state, dict(zip(self.names, self.shadow)))
        if problems:
            raise ValueError("; ".join(problems[:5]))
        with torch.no_grad():
            for name, s in zip(self.names, self.shadow):
                s.copy_(state["tensors"][name])
        self.updates = int(state["updates"])


def ema_state_problems(state: Any, shadow: dict[str, torch.Tensor]) -> list[str]:
    """Why a saved EMA state does not fit this network's shadow weights (empty when it does)."""
    if not isinstance(state, dict) or not isinstance(state.get("tensors"), dict):
        return ["ema: not an EMA state (no tensors)"]
    updates = state.get("updates")
    problems = [] if isinstance(updates, int) and not isinstance(updates, bool) and updates >= 0 else [
        f"ema.updates = {str(updates)[:40]}: not a whole number >= 0"]
    tensors = state["tensors"]
    problems += [f"ema: {name} missing" for name in shadow if name not in tensors]
    problems += [f"ema: unexpected {str(name)[:60]}" for name in tensors if name not in shadow]
    for name, like in shadow.items():
        value = tensors.get(name)
        if isinstance(value, torch.Tensor) and (value.shape != like.shape or value.dtype != torch.float32):
            problems.append(f"ema: {name} is {tuple(value.shape)} {value.dtype}, expected {tuple(like.shape)} float32")
        elif name in tensors and not isinstance(value, torch.Tensor):
            problems.append(f"ema: {name} is a {type(value).__name__}, not a tensor")
    return problems
