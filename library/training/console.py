"""The terminal view of a run: the plan, a tqdm bar, and one line per epoch, save and sample."""
from __future__ import annotations

import sys
from typing import Any, TextIO

from library.training.events import Events


def format_lr(info: dict[str, Any]) -> str:
    """'lr 1.0e-04' for one value, 'lr te 5e-05 unet 1e-04' when groups differ; d·lr for adaptive optimizers."""
    parts = []
    lrs = info.get("lr") or {}
    if len(set(lrs.values())) <= 1 and lrs:
        parts.append(f"lr {next(iter(lrs.values())):.2e}")
    else:
        parts.append("lr " + " ".join(f"{k} {v:.2e}" for k, v in lrs.items()))
    dlr = info.get("dlr")
    if dlr:
        vals = list(dlr.values())
        parts.append(f"d*lr {vals[0]:.2e}" if len(set(vals)) == 1 else "d*lr " + " ".join(f"{k} {v:.2e}" for k, v in dlr.items()))
    return " ".join(parts)


class ConsoleEvents(Events):
    """tqdm progress bar: step/total, epoch, current and average loss, lr, d·lr, s/step and ETA (tqdm's)."""

    def __init__(self, stream: TextIO | None = None, bar: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.bar_enabled = bar
        self.bar = None

    def _print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def on_plan(self, info: dict[str, Any]) -> None:
        self._print(info.get("text", ""))
        self._print(f"seed: {info.get('seed')}")
        for w in info.get("warnings", []):
            self._print(f"warning: {w}")

    def on_log(self, info: dict[str, Any]) -> None:
        self._print(str(info.get("message", "")))

    def on_step(self, info: dict[str, Any]) -> None:
        if not self.bar_enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=info["total_steps"], file=self.stream, unit="step", dynamic_ncols=True,
                            initial=info["step"] - 1, desc="steps")
        self.bar.update(info["step"] - self.bar.n)
        sps = info.get("s_per_step")
        self.bar.set_postfix_str(
            f"epoch {info['epoch']}/{info['num_epochs']} loss {info['loss']:.4f} avg {info['avg_loss']:.4f} "
            f"{format_lr(info)}" + (f" {sps:.2f}s/step" if sps else ""), refresh=False)

    def on_epoch(self, info: dict[str, Any]) -> None:
        val = info.get("val_loss")
        self._print(f"epoch {info['epoch']}/{info['num_epochs']} done: average loss {info['avg_loss']:.4f}"
                    + (f", validation loss {val:.4f}" if val is not None else ""))

    def on_validation(self, info: dict[str, Any]) -> None:
        if info["kind"] == "step":
            self._print(f"step {info['step']}: validation loss {info['val_loss']:.4f} "
                        f"(divergence from training {info['divergence']:+.4f})")

    def on_save(self, info: dict[str, Any]) -> None:
        self._print(f"saved {info['path']} (epoch {info['epoch']}, step {info['step']})")

    def on_sample(self, info: dict[str, Any]) -> None:
        for p in info.get("paths", []):
            self._print(f"sample {p}")

    def on_finish(self, info: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        state = "stopped" if info.get("stopped") else "finished"
        self._print(f"training {state} after {info['global_step']} steps; LoRA: {info.get('final_file')}")
        if info.get("log_dir"):
            self._print(f"TensorBoard: tensorboard --logdir \"{info['log_dir']}\"")

    def on_error(self, info: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
