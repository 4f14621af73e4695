"""What gets logged: loss averages and TensorBoard scalars under sd-scripts' tag names.

Tags (sd-scripts train_network.py): `loss/current`, `loss/average`, `lr/<group>`
and, for D-Adaptation/Prodigy, `lr/d*lr/<group>`, all at x = global step;
`loss/epoch_average` at x = epoch. sd-scripts' lr tag loop has a `for ... else`
that logs every group a second time as `lr/group<i>` (and `lr/textencoder`
again); dashboards built on sd-scripts logs expect those tags, so we keep them.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class LossRecorder:
    """sd-scripts' moving average: a window of one epoch's worth of per-batch losses.

    In the first epoch losses are appended; later, the loss of batch i replaces
    batch i of the previous epoch, so `moving_average` always covers one epoch.
    """

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.total = 0.0

    def add(self, epoch: int, step: int, loss: float) -> None:
        """`epoch` counts from 1, `step` is the batch index within the epoch from 0."""
        if epoch == 1 or step >= len(self.losses):
            self.losses.append(loss)
        else:
            self.total -= self.losses[step]
            self.losses[step] = loss
        self.total += loss

    @property
    def moving_average(self) -> float:
        return self.total / len(self.losses) if self.losses else float("nan")

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = [float(x) for x in state["losses"]]
        self.total = sum(self.losses)


def lr_logs(lrs: list[float], names: list[str], d_values: list[float | None]) -> dict[str, float]:
    """The lr/* scalars for one step, named as sd-scripts names them.

    `names` are the param-group names ("textencoder", "unet"); `d_values` the
    adaptive optimizers' d per group (None for others).
    """
    logs: dict[str, float] = {}
    adaptive = any(d is not None for d in d_values)
    for lr, name, d in zip(lrs, names, d_values):
        logs[f"lr/{name}"] = float(lr)
        if d is not None:
            logs[f"lr/d*lr/{name}"] = float(d) * float(lr)
    # sd-scripts' for-else: runs after every loop, re-logging groups by index
    start = 0
    if names and names[0] == "textencoder":
        logs["lr/textencoder"] = float(lrs[0])
        start = 1
    for i in range(start, len(lrs)):
        logs[f"lr/group{i}"] = float(lrs[i])
        if adaptive and d_values[i] is not None:
            logs[f"lr/d*lr/group{i}"] = float(d_values[i]) * float(lrs[i])
    return logs


def run_log_dir(logging_dir: str | os.PathLike[str], log_prefix: str | None, now: float | None = None) -> Path:
    """`<logging_dir>/<log_prefix><YYYYmmddHHMMSS>` as sd-scripts names a run's log folder."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now if now is not None else time.time()))
    return Path(logging_dir) / f"{log_prefix or ''}{stamp}"


def _quiet_writer_thread_errors() -> None:
    """TensorBoard's writer thread re-raises a failed write, which Python prints as a thread traceback;
    the same exception reaches the training thread on the next call, where TensorBoardLog reports it once."""
    previous = threading.excepthook
    if getattr(previous, "lorasmith_quiet", False):
        return

    def hook(args: Any) -> None:
        if issubclass(args.exc_type, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
            return
        previous(args)

    hook.lorasmith_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = hook


class TensorBoardLog:
    """A SummaryWriter for one run; `None`-safe so the trainer needs no ifs.

    Logs are secondary: when they cannot be written (a full disk) logging stops with one
    message through `on_problem` and training goes on; its own saves report the disk.
    """

    def __init__(self, log_dir: Path | None, on_problem: Callable[[str], None] | None = None) -> None:
        self.log_dir = log_dir
        self._writer = None
        self._on_problem = on_problem
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir.mkdir(parents=True, exist_ok=True)
            _quiet_writer_thread_errors()
            self._writer = SummaryWriter(str(log_dir))

    def _stop(self, exc: OSError) -> None:
        writer, self._writer = self._writer, None
        with contextlib.suppress(Exception):
            writer.close()
        if self._on_problem is not None:
            self._on_problem(f"TensorBoard logs in {self.log_dir} stopped: {exc.strerror or exc}; training goes on")

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        try:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, global_step=step)
        except OSError as exc:
            self._stop(exc)

    def flush(self) -> None:
        if self._writer is not None:
            try:
                self._writer.flush()
            except OSError as exc:
                self._stop(exc)

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as exc:
                self._stop(exc)
            self._writer = None
