"""LoRA files of a run: names, formats, metadata and pruning, as sd-scripts lays them out.

`<output_name>-000001.safetensors` per epoch (6 digits), `-step00000100` per step
(8 digits), `<output_name>.safetensors` at the end. Every file is written
atomically (temp name in the same folder, then rename).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch

from library.errors import TrainingError
from library.fileio import atomic_path, free_bytes, human_bytes, write_failure_reason

SAVE_DTYPES = {None: None, "float": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def epoch_file_name(output_name: str, epoch: int, ext: str) -> str:
    return f"{output_name}-{epoch:06d}.{ext}"


def step_file_name(output_name: str, step: int, ext: str) -> str:
    return f"{output_name}-step{step:08d}.{ext}"


def final_file_name(output_name: str, ext: str) -> str:
    return f"{output_name}.{ext}"


def should_save_epoch(epoch: int, every: int | None, num_epochs: int) -> bool:
    """sd-scripts: every N epochs, except the last epoch, which gets the final (unnumbered) file."""
    return bool(every) and epoch % every == 0 and epoch < num_epochs


def should_save_step(step: int, every: int | None) -> bool:
    return bool(every) and step % every == 0


def _numbered(output_dir: Path, output_name: str, ext: str, pattern: str) -> dict[int, Path]:
    rx = re.compile(re.escape(output_name) + pattern + re.escape("." + ext) + "$")
    found = {}
    for p in output_dir.glob(f"{output_name}-*.{ext}"):
        m = rx.match(p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def epoch_files_of(output_dir: Path, output_name: str, ext: str) -> list[Path]:
    """The per-epoch files `<output_name>-000001.<ext>` … in `output_dir`, by epoch (EMA twins not included)."""
    return [p for _, p in sorted(_numbered(output_dir, output_name, ext, r"-(\d{6})").items())]


def prune_epoch_files(output_dir: Path, output_name: str, ext: str, current_epoch: int,
                      every: int, keep_last: int | None) -> list[Path]:
    """Remove per-epoch files older than the last `keep_last` saves (sd-scripts' --save_last_n_epochs)."""
    if not keep_last:
        return []
    oldest_kept = current_epoch - every * keep_last
    removed = []
    for epoch, path in _numbered(output_dir, output_name, ext, r"-(\d{6})").items():
        if epoch <= oldest_kept:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def prune_step_files(output_dir: Path, output_name: str, ext: str, current_step: int,
                     keep_last_steps: int | None) -> list[Path]:
    """Remove per-step files saved more than `keep_last_steps` steps ago (--save_last_n_steps)."""
    if not keep_last_steps:
        return []
    removed = []
    for step, path in _numbered(output_dir, output_name, ext, r"-step(\d{8})").items():
        if step < current_step - keep_last_steps:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def save_dtype(save_precision: str | None) -> torch.dtype | None:
    try:
        return SAVE_DTYPES[save_precision]
    except KeyError:
        raise TrainingError(f"save_precision {save_precision!r} is not one of float, fp16, bf16") from None


def write_lora(network: Any, path: Path, fmt: str, dtype: torch.dtype | None, metadata: Mapping[str, str]) -> Path:
    """One LoRA file: safetensors with metadata and sshs hashes, or a torch `ckpt`/`pt` state dict.

    sd-scripts writes ckpt/pt as a bare state dict; metadata travels only in safetensors.
    """
    if fmt != "safetensors":
        return write_tensors(network.state_dict(), path, fmt, dtype, metadata)
    try:
        return network.save_weights(path, dtype, metadata)
    except Exception as exc:  # a full disk arrives as OSError, SafetensorError or RuntimeError
        reason = write_failure_reason(exc, path)
        if reason is None:
            raise
        raise write_error(path, reason) from None


def write_tensors(tensors: Mapping[str, torch.Tensor], path: Path, fmt: str, dtype: torch.dtype | None,
                  metadata: Mapping[str, str]) -> Path:
    """Like write_lora, for a state dict that is not the network's own (the EMA weights)."""
    from library.lora.file import save_lora

    try:
        if fmt == "safetensors":
            return save_lora(tensors, path, dtype, metadata)
        state = {k: (v.detach().cpu().to(dtype) if dtype is not None and v.is_floating_point() else v.detach().cpu())
                 for k, v in tensors.items()}
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return path
    except Exception as exc:  # a full disk arrives as OSError, SafetensorError or RuntimeError
        reason = write_failure_reason(exc, path)
        if reason is None:
            raise
        raise write_error(path, reason) from None


def write_error(path: Path, reason: str, what: str = "") -> TrainingError:
    """The named error for a save that failed: which file, why, and that nothing else was harmed."""
    free = free_bytes(path.parent)
    return TrainingError(f"cannot write {what}{path}: {reason}", [
        f"nothing of {path.name} was left behind; the files saved before it are intact",
        (f"{human_bytes(free)} free on the filesystem of {path.parent}; " if free is not None else "")
        + "free disk space or choose another --output_dir, then --resume from the last state or train again"])
