"""Training state folders for exact resume: `<output_name>-000001-state/`, `-step00000100-state/`, `-state/`.

A state folder holds everything the loop's future depends on: the network
weights (fp32, `network.safetensors`), optimizer, LR scheduler and gradient
scaler state, every RNG (Python, NumPy, torch CPU/CUDA, the noise generator;
the data order is derived from seed, epoch and batch), the loop position and
the loss window (`train_state.pt`), and the config used (`config.json`, also the
human-readable `state.json`). It is written into a temp folder beside the
destination and renamed into place, so a crash leaves either the previous
complete folder or none. `train_state.pt` is read with `weights_only=True`:
a state folder from elsewhere cannot run code.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from library.config import TrainConfig
from library.errors import ConfigError
from library.fileio import apply_user_mode, own_temp_prefix, write_failure_reason
from library.safetensors_header import read_header
from library.training.saving import write_error
from library.training.state_check import (
    STATE_HELP,
    check_optimizer_state,
    check_scheduler_state,
    check_train_state,  # noqa: F401  (the trainer calls it as run_state.check_train_state)
    optimizer_probe,
    restore_part,
)

STATE_FORMAT = 1
# Fields that may differ on resume without changing the trajectory: where files and logs go,
# how often things are saved or sampled, how data is loaded, and the resume options themselves.
FREE_TO_CHANGE = frozenset({
    "resume", "resume_allow_changes", "output_dir", "output_name", "logging_dir", "log_prefix", "progress_file",
    "save_state", "save_state_on_train_end", "save_every_n_epochs", "save_every_n_steps", "save_last_n_epochs",
    "save_last_n_steps", "save_model_as", "save_precision", "no_metadata", "sample_prompts", "sample_every_n_epochs",
    "sample_every_n_steps", "sample_at_first", "sample_sampler", "max_data_loader_n_workers",
    "persistent_data_loader_workers",
})

# The saved optimizer state is tied to these: refused even with --resume_allow_changes.
NOT_RESUMABLE = frozenset({"optimizer_type", "optimizer_args"})


def state_folder_name(lora_file_name: str, ext: str) -> str:
    """`t-000001.safetensors` -> `t-000001-state`; `t.safetensors` -> `t-state` (sd-scripts' layout)."""
    return lora_file_name[: -len(ext) - 1] + "-state"


def _numpy_state_to_plain(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_plain(plain: list) -> tuple:
    name, keys, pos, has_gauss, cached = plain
    return (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_to_plain(rng_state: dict[str, Any]) -> dict[str, Any]:
    """TrainingRNG.state_dict() with NumPy/Python parts as tensors/lists (loadable with weights_only)."""
    plain = dict(rng_state)
    plain["numpy"] = _numpy_state_to_plain(rng_state["numpy"])
    plain["python"] = _python_state_to_plain(rng_state["python"])
    return plain


def rng_from_plain(plain: dict[str, Any]) -> dict[str, Any]:
    state = dict(plain)
    state["numpy"] = _numpy_state_from_plain(plain["numpy"])
    version, internal, gauss = plain["python"]
    state["python"] = (version, tuple(internal), gauss)
    return state


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_changes(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Lines `name: saved -> now` for fields that differ and could change the trajectory."""
    now = config_dict(cfg)
    lines = []
    for name in sorted(set(saved) | set(now)):
        if name in FREE_TO_CHANGE or saved.get(name) == now.get(name):
            continue
        lines.append(f"{name}: {saved.get(name)!r} -> {now.get(name)!r}")
    return lines


@contextlib.contextmanager
def atomic_folder(dest: Path):
    """Yield a temp folder beside `dest`; on success it replaces `dest` (the old one is removed after)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=own_temp_prefix(dest), suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        apply_user_mode(tmp)  # mkdtemp made it 0700 and safetensors its file 0600
        old = None
        if dest.exists():
            old = dest.parent / f"{own_temp_prefix(dest)}prev.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_state(folder: Path, parts: Any, position: dict[str, int], extra: dict[str, Any]) -> Path:
    """Write the state folder for `parts` (a RunParts) at `position` (epoch, batch, global_step)."""
    from safetensors.torch import save_file

    scaler = getattr(parts.accelerator, "scaler", None)
    train_state = {
        "format": STATE_FORMAT,
        "position": dict(position),
        "optimizer": parts.optimizer.optimizer.state_dict(),
        "lr_scheduler": parts.lr_scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_to_plain(parts.rng.state_dict()),
        "dataset": parts.dataset.state_dict(),
        **extra,
    }
    network = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in parts.network.state_dict().items()}
    try:
        with atomic_folder(folder) as tmp:
            save_file(network, str(tmp / "network.safetensors"))
            torch.save(train_state, tmp / "train_state.pt")
            (tmp / "config.json").write_text(json.dumps(config_dict(parts.config), indent=1), encoding="utf-8")
            (tmp / "state.json").write_text(json.dumps({"format": STATE_FORMAT, **position}), encoding="utf-8")
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    except Exception as exc:  # a full disk arrives as OSError, SafetensorError or RuntimeError (torch.save)
        reason = write_failure_reason(exc, folder / "train_state.pt")
        if reason is None:
            raise
        raise write_error(folder, reason, "the training state ") from None
    return folder


def find_latest(output_dir: Path) -> Path:
    """The state folder in `output_dir` with the highest global step (newest on ties)."""
    best: tuple[int, float, Path] | None = None
    for info in output_dir.glob("*-state/state.json") if output_dir.is_dir() else []:
        try:
            step = int(json.loads(info.read_text(encoding="utf-8"))["global_step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        key = (step, info.stat().st_mtime, info.parent)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        raise ConfigError(f"--resume latest: no saved state in {output_dir}",
                          ["train with --save_state (or stop a run) to write <output_name>-...-state folders"])
    return best[2]


def resolve_resume(cfg: TrainConfig) -> Path:
    if cfg.resume == "latest":
        if not cfg.output_dir:
            raise ConfigError("--resume latest needs --output_dir (the folder searched for states)")
        return find_latest(Path(cfg.output_dir))
    folder = Path(cfg.resume)
    if not (folder / "train_state.pt").is_file() or not (folder / "network.safetensors").is_file():
        raise ConfigError(f"--resume {folder}: not a lorasmith state folder",
                          ["expected network.safetensors and train_state.pt inside; pass a <output_name>-...-state folder or 'latest'"])
    return folder


def read_saved_config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder / 'config.json'}: cannot read the saved config ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{folder / 'config.json'}: not a config object")
    return data


def check_config(folder: Path, cfg: TrainConfig) -> list[str]:
    """The changes against the saved config; refused (ConfigError) unless resume_allow_changes.

    Learning rates and schedule settings that change are applied from the resume on (see restore);
    the optimizer's own settings cannot be, so they are refused even with resume_allow_changes.
    """
    changes = config_changes(read_saved_config(folder), cfg)
    if changes and not cfg.resume_allow_changes:
        raise ConfigError(f"--resume {folder}: the config differs from the one the state was saved with", changes + [
            "resume with the same settings, or pass --resume_allow_changes to continue anyway (the result will differ)"])
    fixed = [c for c in changes if c.split(":", 1)[0] in NOT_RESUMABLE]
    if fixed:
        raise ConfigError(f"--resume {folder}: {', '.join(c.split(':', 1)[0] for c in fixed)} cannot change on resume",
                          fixed + ["the saved optimizer state (moments, step counts) belongs to the saved optimizer and its "
                                   "arguments; resume with those, or start a new run from the LoRA file with "
                                   "--network_weights"])
    return changes


def load_train_state(folder: Path) -> dict[str, Any]:
    path = folder / "train_state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or hostile file
        raise ConfigError(f"{path}: cannot load the training state ({type(exc).__name__}: {str(exc)[:200]})",
                          ["the folder is damaged or not a lorasmith state; pick another with --resume"]) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ConfigError(f"{path}: unknown state format", ["this state was written by another program or version"])
    return state


def restore(folder: Path, parts: Any, state: dict[str, Any]) -> list[str]:
    """Load network, optimizer, schedule, scaler, RNG and data position into freshly built `parts`.

    Call check_train_state first; a part whose values its loader still refuses is named here.
    Returns notes on learning rates changed by --resume_allow_changes (applied, see apply_learning_rates).
    """
    from safetensors.torch import load_file

    read_header(folder / "network.safetensors", ConfigError, "state network file")
    try:
        weights = load_file(str(folder / "network.safetensors"))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ConfigError(f"{folder / 'network.safetensors'}: cannot load ({str(exc)[:200]})") from None
    result = parts.network.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(f"{folder}: the saved network does not match this one",
                          [f"missing: {k}" for k in result.missing_keys[:5]] + [f"unexpected: {k}" for k in result.unexpected_keys[:5]])
    fresh_lrs = list(getattr(parts.lr_scheduler, "base_lrs", []))  # from this run's config, before the state's
    inner = getattr(parts.optimizer.optimizer, "optimizer", parts.optimizer.optimizer)  # under accelerate's wrapper
    probe = optimizer_probe(inner)
    try:
        parts.optimizer.optimizer.load_state_dict(state["optimizer"])
    except ValueError as exc:  # torch: "loaded state dict contains a parameter group that doesn't match ..."
        raise ConfigError(f"{folder}: the saved optimizer state does not fit this run's optimizer ({exc})", [
            "states saved before lorasmith kept the LoRA in one flat tensor per group (elementwise optimizers) "
            "hold one entry per tensor; continue from the LoRA file instead: --network_weights <file>"]) from None
    except (KeyError, TypeError, IndexError, RuntimeError, AttributeError) as exc:
        raise ConfigError(f"--resume {folder}: the saved optimizer cannot be restored ({type(exc).__name__}: "
                          f"{str(exc)[:200]})", [STATE_HELP]) from None
    check_optimizer_state(folder, inner, probe)
    check_scheduler_state(folder, state["lr_scheduler"], parts.lr_scheduler.state_dict())
    restore_part(folder, "lr_scheduler", parts.lr_scheduler.load_state_dict, state["lr_scheduler"])
    scaler = getattr(parts.accelerator, "scaler", None)
    if scaler is not None and state.get("scaler"):
        restore_part(folder, "gradient scaler", scaler.load_state_dict, state["scaler"])
    restore_part(folder, "random generators", lambda v: parts.rng.load_state_dict(rng_from_plain(v)), state["rng"])
    restore_part(folder, "data position", parts.dataset.load_state_dict, state["dataset"])
    return apply_learning_rates(parts.lr_scheduler, fresh_lrs, list(getattr(parts, "group_names", [])))


def apply_learning_rates(scheduler: Any, lrs: list[float], names: list[str]) -> list[str]:
    """Put this run's learning rates back after a state was loaded; one note per group that changed.

    A LambdaLR's state holds its `base_lrs` and the optimizer's groups their `lr`, so a resume with
    a changed --learning_rate/--unet_lr/--text_encoder_lr would keep training at the saved rate while
    the LoRA's metadata names the new one. The schedule itself (warmup, cycles, power) comes from
    this run's config already; its step count from the state.
    """
    if type(scheduler) is not torch.optim.lr_scheduler.LambdaLR or list(scheduler.base_lrs) == lrs:
        return []  # unchanged (an exact resume stays bit-exact), or Adafactor's own relative-step schedule
    notes = [f"learning rate of {names[i] if i < len(names) else f'group{i}'}: {old:g} in the state, {new:g} from now on"
             for i, (old, new) in enumerate(zip(scheduler.base_lrs, lrs)) if old != new]
    scheduler.base_lrs = list(lrs)
    for group, base, fn in zip(scheduler.optimizer.param_groups, lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    return notes


def check_processes(folder: Path, state: dict[str, Any], world: int) -> None:
    """Mid-epoch positions count rounds of `num_processes` batches, so they need the same process count."""
    saved = int(state.get("num_processes", 1))
    if saved != world and int(state["position"]["batch"]) != 0:
        raise ConfigError(f"--resume {folder}: saved mid-epoch with {saved} process(es), resumed with {world}", [
            "resume with the same number of processes, or from a state saved at the end of an epoch"])
