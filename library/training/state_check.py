"""Checks of a loaded training state against the run that resumes it, before and while it is restored.

A `train_state.pt` is read with `weights_only=True`, so it cannot run code, but its
values are still whatever the file says: a missing `optimizer`, a `global_step` of
10**15, a scheduler key that overwrites a method, moments of the wrong shape. Each of
these once ended in a traceback deep inside torch (or in a run that "finished" at
once); here they become one ConfigError naming the part and the way out.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from library.errors import ConfigError

_MISSING = object()

# What `save_state` writes, by type: a state missing one, or holding another type, cannot be resumed.
_STATE_PARTS = {"position": dict, "optimizer": dict, "lr_scheduler": dict, "rng": dict, "dataset": dict,
                "recorder": dict}
STATE_HELP = ("the state is damaged or not from lorasmith; resume from another state, or continue from a LoRA "
              "file with --network_weights")


def _whole(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def state_problems(state: dict[str, Any], plan: Any) -> list[str]:
    """One line per part of a loaded train_state.pt that is missing, of the wrong type, or out of this run's range.

    `plan` is the run's TrainingPlan: a position past its last step or epoch cannot be a state of this run
    (a hostile `global_step` of 10**15 would otherwise end the run at once and report success).
    """
    problems = [f"{key}: missing" if key not in state else f"{key}: is a {type(state[key]).__name__}, not a {kind.__name__}"
                for key, kind in _STATE_PARTS.items() if not isinstance(state.get(key), kind)]
    pos = state.get("position")
    if isinstance(pos, dict):
        problems += [f"position.{k}: not a position field" for k in sorted(map(str, pos)) if k not in
                     ("epoch", "batch", "global_step")]
        limits = {"epoch": (1, plan.epochs + 1, "epochs"), "batch": (0, plan.batches_per_epoch, "batches per epoch"),
                  "global_step": (0, plan.total_steps, "steps")}
        for name, (low, high, unit) in limits.items():
            if not _whole(pos.get(name), low, high):
                problems.append(f"position.{name} = {str(pos.get(name))[:40]}: this run has {high - (name == 'epoch')} "
                                f"{unit}, so it must be a whole number from {low} to {high}")
    opt = state.get("optimizer")
    if isinstance(opt, dict) and not (isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
                                      and all(isinstance(g, dict) for g in opt["param_groups"])):
        problems.append("optimizer: lacks its 'state' and 'param_groups'")
    if state.get("ema") is not None and not (isinstance(state["ema"], dict) and isinstance(state["ema"].get("tensors"), dict)):
        problems.append("ema: is not an EMA state (a dict holding 'tensors' and 'updates')")
    if not isinstance(state.get("epoch_losses", []), list):
        problems.append(f"epoch_losses: is a {type(state['epoch_losses']).__name__}, not a list")
    for key, low in (("nan_steps", 0), ("num_processes", 1)):
        if key in state and not _whole(state[key], low, 2**31):
            problems.append(f"{key} = {str(state[key])[:40]}: not a whole number >= {low}")
    return problems


def check_train_state(folder: Path, state: dict[str, Any], plan: Any) -> None:
    """ConfigError listing every problem of a loaded state against this run's plan (before anything is restored)."""
    problems = state_problems(state, plan)
    if problems:
        raise ConfigError(f"--resume {folder}: the saved training state cannot be resumed by this run",
                          problems + [STATE_HELP])


def restore_part(folder: Path, name: str, load: Any, value: Any) -> None:
    """`load(value)`, with any failure of the part's own loader (hostile values) named as a ConfigError."""
    try:
        load(value)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OverflowError) as exc:
        raise ConfigError(f"--resume {folder}: the saved {name} cannot be restored ({type(exc).__name__}: "
                          f"{str(exc)[:200]})", [STATE_HELP]) from None


def _is_number(value: object) -> bool:
    """A real number: int or float (not bool), or a one-value real tensor (Adafactor reports its lr as one)."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.dtype.is_complex and value.dtype != torch.bool
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fits(value: object, like: object) -> bool:
    """`value` has the type of `like` (numbers interchangeable; lists of numbers stay lists of numbers, same length)."""
    if _is_number(like):
        return _is_number(value)
    if isinstance(like, list) and like and all(_is_number(x) for x in like):
        return isinstance(value, list) and len(value) == len(like) and all(_is_number(x) for x in value)
    return type(value) is type(like)


def check_scheduler_state(folder: Path, saved: dict[str, Any], fresh: dict[str, Any]) -> None:
    """A scheduler's load_state_dict copies every key into the object: only its own keys, of its own types."""
    bad = [k for k, v in saved.items() if k not in fresh or not _fits(v, fresh[k])]
    if bad:
        raise ConfigError(f"--resume {folder}: the saved lr_scheduler state does not fit this run's scheduler",
                          [f"lr_scheduler.{str(k)[:40]}: unexpected key or type" for k in bad[:10]] + [STATE_HELP])


@dataclass
class OptimizerProbe:
    """What a valid state of this run's optimizer holds: its groups' settings and, per parameter, the slots
    (name -> a value of the right type, shape and dtype) one step of a copy of the fresh optimizer creates."""

    groups: list[dict[str, Any]]
    slots: list[dict[str, Any]] | None


def optimizer_probe(optimizer: Any) -> OptimizerProbe:
    """Take the probe from the freshly built optimizer, before a state is loaded into it."""
    groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        clone = copy.deepcopy(optimizer)
        params = [p for g in clone.param_groups for p in g["params"]]
        for param in params:
            param.grad = torch.zeros_like(param)
        type(clone).step(clone)  # the class's step: an instance attribute may be a wrapper bound to the original
        slots = [dict(clone.state.get(p, {})) for p in params]
    except Exception:  # an optimizer that cannot step on zero gradients: then only types and shapes are checked
        slots = None
    return OptimizerProbe(groups, slots)


def _slot_problem(value: Any, like: Any, param: torch.Tensor) -> str | None:
    """What is wrong with one loaded slot against the probe's `like` (None: no probe, the parameter's shape)."""
    if _is_number(value):  # a step count: int, float or a one-value tensor
        return None if like is None or _is_number(like) else f"a single value (expected shape {tuple(like.shape)})"
    if not isinstance(value, torch.Tensor):
        return f"a {type(value).__name__}"
    if _is_number(like):
        return f"shape {tuple(value.shape)} (expected a single value)"
    want_shape, want_dtype = (like.shape, like.dtype) if isinstance(like, torch.Tensor) else (param.shape, None)
    if value.shape != want_shape or (want_dtype is not None and value.dtype != want_dtype):
        return f"shape {tuple(value.shape)} {value.dtype} (expected {tuple(want_shape)} {want_dtype or ''})".strip()
    return None


def _group_problems(groups: list[dict[str, Any]], fresh: list[dict[str, Any]]) -> list[str]:
    """Settings the config decides must be the config's; numbers (lr, adaptive d) may differ but stay numbers."""
    problems = []
    for i, (group, want) in enumerate(zip(groups, fresh)):
        for key, like in want.items():
            value = group.get(key, _MISSING)
            if value is _MISSING:
                problems.append(f"optimizer group {i}: {key} is missing")
            elif _is_number(like) or isinstance(like, torch.Tensor):
                if not _is_number(value):
                    problems.append(f"optimizer group {i}: {key} is a {type(value).__name__}, not a number")
            elif type(value) is not type(like) or value != like:
                problems.append(f"optimizer group {i}: {key} = {str(value)[:40]} (this run: {like})")
    return problems


def check_optimizer_state(folder: Path, optimizer: Any, probe: OptimizerProbe) -> None:
    """After load_state_dict: every slot and setting fit the probe, or the first step would fail inside torch."""
    problems = _group_problems(optimizer.param_groups, probe.groups)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, param in enumerate(params):
        slots = optimizer.state.get(param)
        if not slots:
            continue
        want = probe.slots[i] if probe.slots is not None and i < len(probe.slots) else None
        if want is not None and set(slots) != set(want):
            problems.append(f"optimizer state of parameter {i}: holds {sorted(map(str, slots))}, "
                            f"this optimizer keeps {sorted(want)}")
            continue
        for key, value in slots.items():
            problem = _slot_problem(value, None if want is None else want.get(key), param)
            if problem:
                problems.append(f"optimizer state of parameter {i}: {str(key)[:40]} is {problem}")
    if problems:
        raise ConfigError(f"--resume {folder}: the saved optimizer state does not fit this run's optimizer",
                          problems[:10] + [STATE_HELP])
