"""Checks of the disk before a run: every output path writable, and room for the saves.

A read-only output folder used to surface as `OSError: [Errno 30]` from the lock
file, and a full disk as a RuntimeError from torch.save hours into a run. Both
are found here, after validation and before any model is loaded (writability)
or before the first step (space, which needs the network's size).
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

from library.config import TrainConfig
from library.errors import ConfigError
from library.fileio import free_bytes, human_bytes

# Optimizer state per trainable element, in bytes (AdamW: exp_avg + exp_avg_sq in fp32;
# 8-bit variants: one byte each; Lion/SGD: one momentum; D-Adaptation/Prodigy: up to four).
OPTIMIZER_STATE_BYTES = (("pagedadamw8bit", 2), ("adamw8bit", 2), ("lion8bit", 1), ("sgdnesterov8bit", 1),
                         ("adamw", 8), ("lion", 4), ("sgdnesterov", 4), ("adafactor", 4), ("dadapt", 16), ("prodigy", 16))


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (or in the existing folder it would be created under)."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        return f"{base} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".lorasmith-probe-", dir=base)
    except OSError as exc:
        where = "" if base == folder.absolute() else f" (it would be created in {base})"
        return f"cannot create files in {base}{where}: {exc.strerror or exc}"
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def _file_problem(path: Path) -> str | None:
    if path.is_dir():
        return f"{path} is a folder; give a file name such as {path / 'progress.jsonl'}"
    if path.exists():
        try:
            with open(path, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            return f"cannot write {path}: {exc.strerror or exc}"
        return None
    return _folder_problem(path.parent)


def check_writable(cfg: TrainConfig) -> None:
    """ConfigError naming each output path (output_dir, logging_dir, progress_file, latent cache) that cannot be written."""
    folders = [("output_dir", cfg.output_dir), ("logging_dir", cfg.logging_dir)]
    if cfg.cache_latents_to_disk:  # the cache files go beside the images
        folders += [("train_data_dir", cfg.train_data_dir), ("reg_data_dir", cfg.reg_data_dir)]
    problems = [f"{name}: {why}" for name, value in folders if value and (why := _folder_problem(Path(value)))]
    if cfg.progress_file and (why := _file_problem(Path(cfg.progress_file))):
        problems.append(f"progress_file: {why}")
    if problems:
        raise ConfigError("Cannot write where the training writes its files", problems + [
            "choose writable paths (a read-only disk or folder cannot hold LoRA files, logs or the latent cache)"])


def save_bytes(cfg: TrainConfig, n_params: int) -> tuple[int, int]:
    """Estimated bytes of one LoRA file and of one state folder for `n_params` trainable elements."""
    lora = n_params * (2 if cfg.save_precision in ("fp16", "bf16") else 4) + 64 * 1024  # + header and metadata
    name = cfg.optimizer_type.lower()
    per = next((b for prefix, b in OPTIMIZER_STATE_BYTES if name.startswith(prefix)), 8)
    state = n_params * (4 + per) + 64 * 1024
    return lora, state


def planned_saves(cfg: TrainConfig, epochs: int, total_steps: int) -> tuple[int, int]:
    """(LoRA files, state folders) the run will hold at its end, counting --save_last_n_* pruning."""
    files = 1
    if cfg.save_every_n_epochs:
        made = max(0, (epochs - 1) // cfg.save_every_n_epochs)
        files += min(made, cfg.save_last_n_epochs or made)
    if cfg.save_every_n_steps:
        made = total_steps // cfg.save_every_n_steps
        kept = math.ceil(cfg.save_last_n_steps / cfg.save_every_n_steps) + 1 if cfg.save_last_n_steps else made
        files += min(made, kept)
    states = files if cfg.save_state else (1 if cfg.save_state_on_train_end else 0)
    return files, states


def space_warnings(cfg: TrainConfig, n_params: int, epochs: int, total_steps: int) -> list[str]:
    """A warning when the output folder's filesystem cannot hold the first save, or all the planned ones."""
    free = free_bytes(cfg.output_dir or ".")
    if free is None:
        return []
    lora, state = save_bytes(cfg, n_params)
    files, states = planned_saves(cfg, epochs, total_steps)
    first = lora + (state if states else 0)
    total = files * lora + states * state
    where = f"{cfg.output_dir} has {human_bytes(free)} free"
    if free < first:
        return [f"{where}, but one save needs about {human_bytes(first)} (LoRA {human_bytes(lora)}"
                + (f" + state {human_bytes(state)}" if states else "") + "): the first save will fail; free disk space"]
    if free < total:
        return [f"{where}, but the {files} LoRA file(s) and {states} state folder(s) this run keeps need about "
                f"{human_bytes(total)}: later saves will fail; free disk space or use --save_last_n_epochs/steps"]
    return []
