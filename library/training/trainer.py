"""The training loop: `train(config, events, commands) -> TrainResult`.

The loop can start at any (epoch, batch-in-epoch, global step) — a `LoopPosition` —
and all randomness lives in `RunParts.rng` and the dataset's (seed, epoch, batch)
rule, so a saved state can be continued exactly. Outputs follow sd-scripts:
per-epoch/per-step/final LoRA files with full metadata, TensorBoard scalars
under sd-scripts' tags, samples through library.sampling.
"""
from __future__ import annotations

import dataclasses
import math
import random
import shutil
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from library.config import TrainConfig
from library.config_validate import validate
from library.data.plan import format_plan
from library.data.prepare import PreparedData, prepare_data
from library.errors import DatasetError, LorasmithError, TrainingError
from library.training import distributed, preflight, saving, state as run_state
from library.training.ema import EmaSettings, LoraEMA, ema_file_path
from library.training.events import Commands, Events
from library.training.lock import output_lock
from library.training.memory import gc_paused
from library.training.metadata import RunMetadata
from library.training.optimizers import check_group_lrs
from library.training.readback import StepReadback, StepRecord
from library.training.rng import pick_seed
from library.training.epoch_scores import EpochScoreHook
from library.training.samples import SampleHook
from library.training.setup import RunParts, build_run
from library.training.step import StepMath
from library.training.tracking import LossRecorder, TensorBoardLog, lr_logs, run_log_dir
from library.training.validation import Validator, should_validate_epoch, should_validate_step


@dataclass
class LoopPosition:
    """Where the loop is: the epoch in progress (from 1), its next batch, optimizer steps done."""

    epoch: int = 1
    batch: int = 0
    global_step: int = 0


@dataclass
class TrainResult:
    output_dir: Path
    files: list[Path]
    final_file: Path | None
    global_step: int
    epochs: int
    seed: int
    log_dir: Path | None
    epoch_losses: list[float] = field(default_factory=list)
    validation_losses: list[tuple[int, float]] = field(default_factory=list)  # (epoch, epoch-end validation loss)
    stopped: bool = False
    warnings: list[str] = field(default_factory=list)
    ema_files: list[Path] = field(default_factory=list)  # <name>-…-ema files (--ema_decay), oldest first


class Trainer:
    """Runs the loop over `RunParts`, reporting through `events` and obeying `commands`."""

    def __init__(self, parts: RunParts, events: Events | None = None, commands: Commands | None = None,
                 position: LoopPosition | None = None) -> None:
        self.parts = parts
        self.cfg: TrainConfig = parts.config
        self.events = events or Events()
        self.commands = commands or Commands()
        self.pos = position or LoopPosition()
        self.math = StepMath(parts)
        self.recorder = LossRecorder()
        self.plan = parts.prepared.plan
        self.output_dir = Path(self.cfg.output_dir)
        self.ext = self.cfg.save_model_as
        self.save_dtype = saving.save_dtype(self.cfg.save_precision)
        self.world = parts.accelerator.num_processes
        self.rank = parts.accelerator.process_index
        self.is_main = self.rank == 0  # only the main process writes files and logs
        log_dir = run_log_dir(self.cfg.logging_dir, self.cfg.log_prefix) if self.cfg.logging_dir and self.is_main else None
        self.tb = TensorBoardLog(log_dir, on_problem=lambda message: self.events.on_log({"message": f"warning: {message}"}))
        self.metadata = RunMetadata(parts, session_id=random.SystemRandom().randint(0, 2**32 - 1))
        self.samples = SampleHook(parts, self.events)
        self.epoch_scores = EpochScoreHook(parts, self.events, self.tb)
        self.files: list[Path] = []
        self.epoch_losses: list[float] = []
        self.nan_steps = 0
        self.step_times: deque[float] = deque(maxlen=50)  # wall time between step ends (see _timed)
        self._last_step_end: float | None = None
        self.readback = StepReadback(parts.device)
        self._micro_losses: list[torch.Tensor] = []  # this step's micro-batch losses, still on the device
        self._micro_refs: list[tuple[int, list[str]]] = []  # (batch index, image paths) of each
        self.validator = Validator(parts, self.math)
        self.validation_losses: list[tuple[int, float]] = []
        self.last_val_loss: float | None = None
        settings = EmaSettings.from_config(self.cfg)
        self.ema = LoraEMA(parts.network, settings) if settings else None
        self.ema_files: list[Path] = []

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            stopped = self._loop()
            final = self._save_final(stopped)
        except (Exception, KeyboardInterrupt) as exc:  # reported to the UI, then re-raised unchanged
            kind = "problem" if isinstance(exc, LorasmithError) else type(exc).__name__
            self.events.on_error({"message": str(exc), "kind": kind, "step": self.pos.global_step,
                                  "epoch": self.pos.epoch})
            raise
        finally:
            self.tb.close()
        result = TrainResult(self.output_dir, list(self.files), final, self.pos.global_step,
                             min(self.pos.epoch, self.plan.epochs), self.parts.rng.seed, self.tb.log_dir,
                             list(self.epoch_losses), list(self.validation_losses), stopped, list(self.parts.notes),
                             [f for f in self.ema_files if f.exists()])
        self.events.on_finish({"final_file": str(final) if final else None, "files": [str(f) for f in self.files],
                               "global_step": result.global_step, "epochs": result.epochs, "stopped": stopped,
                               "log_dir": str(self.tb.log_dir) if self.tb.log_dir else None,
                               "output_dir": str(self.output_dir)})
        return result

    def _loop(self) -> bool:
        """True when stopped by a command before the planned end."""
        if self.cfg.sample_at_first and self.pos.global_step == 0:
            self._sample(epoch=0, step=0, force=True)
        while self.pos.epoch <= self.plan.epochs and not self._done():
            if self._run_epoch():
                return True
            self._end_epoch()
        return False

    def _done(self) -> bool:
        return self.pos.global_step >= self.plan.total_steps

    def _run_epoch(self) -> bool:
        p, epoch = self.parts, self.pos.epoch
        p.dataset.set_epoch(epoch, self.pos.batch)
        n_batches = distributed.rounds_per_epoch(len(p.dataset), self.world)
        accum = self.cfg.gradient_accumulation_steps
        for i, batch in self._batches(epoch):
            with gc_paused():
                self._micro_step(batch, i, accum)
            self.pos.batch += 1
            if (i + 1) % accum == 0 or i + 1 == n_batches:
                with gc_paused():
                    self._optimizer_step()
                self._timed()
                self._after_step()
                if distributed.any_process(self.commands.take("stop"), self.world, self.parts.device):
                    return True
                if self._done():
                    break
        return False

    def _timed(self) -> None:
        """Record the wall time since the previous step ended, data loading included.

        Without host syncs the host runs ahead of a GPU and the time spent inside one step
        says little; the interval between step ends is the real rate once the queue is full.
        """
        now = time.perf_counter()
        if self._last_step_end is not None:
            self.step_times.append(now - self._last_step_end)
        self._last_step_end = now

    def _batches(self, epoch: int) -> Any:
        """(index, batch) pairs from the current position: all batches, or this process's shard."""
        if self.world > 1:
            return distributed.sharded_batches(self.parts.dataset, epoch, self.pos.batch, self.rank, self.world)
        return enumerate(self._loader(), start=self.pos.batch)

    def _loader(self) -> Any:
        from library.data.dataset import make_dataloader

        loader = make_dataloader(self.parts.dataset, self.cfg.max_data_loader_n_workers,
                                 self.cfg.persistent_data_loader_workers, self.parts.pin_batches)
        # Starting a DataLoader iterator draws a base seed from torch's global RNG; put it back so
        # the draw depends on nothing and a run resumed mid-epoch sees the same RNG as one never stopped.
        rng_state = torch.get_rng_state()
        iterator = iter(loader)
        torch.set_rng_state(rng_state)
        return iterator

    def _micro_step(self, batch: dict[str, Any], index: int, accum: int) -> None:
        """Forward and backward of one batch; its loss stays on the device (no host sync, see readback)."""
        loss = self.math.loss(batch)
        self._micro_losses.append(loss.detach())
        self._micro_refs.append((index, batch.get("image_paths", [])))
        self.parts.accelerator.backward(loss / accum)

    def _non_finite(self, record: StepRecord, value: float, batch: int, paths: list[str]) -> None:
        """Stop on a NaN/inf loss, naming the step and the images; skip_nan_steps tolerates that many.

        Seen when the step's values are read back (up to a step late on a GPU); with
        skip_nan_steps the step's gradients were already zeroed on the device (`_drop_bad_step`).
        """
        self.nan_steps += 1
        if self.nan_steps <= self.cfg.skip_nan_steps:
            self.parts.notes.append(f"step {record.step}: loss {value}, batch skipped ({self.nan_steps}/{self.cfg.skip_nan_steps})")
            return
        raise TrainingError(
            f"the loss became {value} at step {record.step} (epoch {record.epoch}, batch {batch + 1}); training stopped",
            [f"image: {path}" for path in paths]
            + ["lower the learning rate, use mixed_precision bf16 instead of fp16, or check these images",
               "--skip_nan_steps N skips up to N such batches instead of stopping"])

    def _drop_bad_step(self) -> None:
        """With skip_nan_steps, zero every gradient of a step whose loss is not finite, on the device.

        The host does not know yet (no sync), so the mask is applied unconditionally:
        `masked_fill_` with a one-element mask clears a whole tensor or leaves it as it is.
        """
        bad = ~torch.isfinite(torch.stack(self._micro_losses)).all()
        for param in self.parts.trainable_params:
            if param.grad is not None:
                param.grad.masked_fill_(bad, 0.0)

    def _optimizer_step(self) -> None:
        p = self.parts
        if p.flat is not None:
            p.flat.gather()  # clipping and averaging see the flat gradients; step() scatters back
        if self.cfg.skip_nan_steps:
            self._drop_bad_step()
        distributed.average_gradients(p.trainable_params, self.world)
        if self.cfg.max_grad_norm:
            p.accelerator.clip_grad_norm_(p.trainable_params, self.cfg.max_grad_norm)
        p.optimizer.optimizer.step()
        p.lr_scheduler.step()
        p.optimizer.optimizer.zero_grad(set_to_none=True)
        if p.flat is not None:
            p.flat.finish_step()
        if self.cfg.scale_weight_norms:
            p.network.apply_max_norm(self.cfg.scale_weight_norms)
        self.pos.global_step += 1
        if self.ema is not None:
            self.ema.after_step(self.pos.global_step)

    # -- after each step / epoch -------------------------------------------------------------
    def _after_step(self) -> None:
        step = self.pos.global_step
        lrs, dvals = self._lrs()
        refs, self._micro_refs = self._micro_refs, []
        record = StepRecord(step, self.pos.epoch, [i for i, _ in refs], [paths for _, paths in refs], lrs, dvals)
        self.readback.push(record, self._micro_losses)
        self._micro_losses = []
        self._publish(self.readback.ready())
        if saving.should_save_step(step, self.cfg.save_every_n_steps) or self.commands.take("save_now"):
            self._save_numbered(saving.step_file_name(self.cfg.output_name, step, self.ext), "step")
            if self.is_main:
                self._drop_states(saving.prune_step_files(self.output_dir, self.cfg.output_name, self.ext, step,
                                                          self.cfg.save_last_n_steps))
        if self.validator.enabled and should_validate_step(step, self.cfg.validate_every_n_steps):
            self._validate("step")
        if self.cfg.sample_every_n_steps and step % self.cfg.sample_every_n_steps == 0:
            self._sample(epoch=None, step=step, force=True)
        elif self.commands.take("sample_now"):
            self._sample(epoch=None, step=step, force=True)

    def _publish(self, records: list[StepRecord]) -> None:
        """Read-back steps into the moving average, TensorBoard and the step event, in step order."""
        for record in records:
            for value, batch, paths in zip(record.losses, record.batches, record.image_paths):
                finite = math.isfinite(value)
                self.recorder.add(record.epoch, batch, value if finite else 0.0)
                if not finite:
                    self._non_finite(record, value, batch, paths)
            loss_value = record.losses[-1]
            logs = {"loss/current": loss_value, "loss/average": self.recorder.moving_average}
            logs.update(lr_logs(record.lrs, self.parts.group_names, record.dvals))
            self.tb.scalars(logs, record.step)
            self.events.on_step(self._step_info(record))

    def _catch_up(self) -> None:
        """Wait for every step's values: before saving, sampling or averaging an epoch."""
        self._publish(self.readback.drain())

    def _sample(self, **kwargs: Any) -> None:
        self._catch_up()
        if self.is_main:
            self.samples.maybe(**kwargs)

    def _lrs(self) -> tuple[list[float], list[float | None]]:
        opt = self.parts.optimizer
        lrs = [float(x) for x in self.parts.lr_scheduler.get_last_lr()]
        dvals = [g.get("d") if opt.adaptive else None for g in opt.optimizer.param_groups]
        return lrs, [float(d) if d is not None else None for d in dvals]

    def _step_info(self, record: StepRecord) -> dict[str, Any]:
        names, lrs, dvals = self.parts.group_names, record.lrs, record.dvals
        s_per_step = statistics.median(self.step_times) if self.step_times else None
        remaining = self.plan.total_steps - record.step
        return {
            "step": record.step, "total_steps": self.plan.total_steps,
            "epoch": record.epoch, "num_epochs": self.plan.epochs,
            "loss": record.losses[-1], "avg_loss": self.recorder.moving_average, "val_loss": self.last_val_loss,
            "lr": dict(zip(names, lrs)),
            "dlr": {n: d * lr for n, d, lr in zip(names, dvals, lrs) if d is not None} or None,
            "s_per_step": s_per_step, "eta_s": s_per_step * remaining if s_per_step else None,
        }

    def _end_epoch(self) -> None:
        self._catch_up()
        epoch = self.pos.epoch
        avg = self.recorder.moving_average
        self.epoch_losses.append(avg)
        val = None
        if self.validator.enabled and should_validate_epoch(epoch, self.cfg.validate_every_n_epochs):
            val = self._validate("epoch")
            self.validation_losses.append((epoch, val))
        self.tb.scalars({"loss/epoch_average": avg}, epoch)
        self.tb.flush()
        self.events.on_epoch({"epoch": epoch, "num_epochs": self.plan.epochs, "avg_loss": avg,
                              "step": self.pos.global_step, "val_loss": val})
        if saving.should_save_epoch(epoch, self.cfg.save_every_n_epochs, self.plan.epochs):
            saved = self._save_numbered(saving.epoch_file_name(self.cfg.output_name, epoch, self.ext), "epoch")
            if self.is_main:
                self.epoch_scores.maybe(epoch, saved)
                self._drop_states(saving.prune_epoch_files(self.output_dir, self.cfg.output_name, self.ext, epoch,
                                                           self.cfg.save_every_n_epochs or 1, self.cfg.save_last_n_epochs))
        if self.cfg.sample_every_n_epochs and epoch % self.cfg.sample_every_n_epochs == 0:
            self._sample(epoch=epoch, step=self.pos.global_step, force=True)
        self.pos.epoch += 1
        self.pos.batch = 0

    def _validate(self, kind: str) -> float:
        """One validation after a step or at an epoch's end, logged under sd-scripts' tags."""
        self._catch_up()  # the divergence compares with the training loss's moving average
        result = self.validator.evaluate()
        divergence = result.loss - self.recorder.moving_average
        x = self.pos.global_step if kind == "step" else self.pos.epoch
        self.tb.scalars({f"loss/validation/{kind}_average": result.loss,
                         f"loss/validation/{kind}_divergence": divergence}, x)
        self.last_val_loss = result.loss
        self.events.on_validation({"kind": kind, "step": self.pos.global_step, "epoch": self.pos.epoch,
                                   "val_loss": result.loss, "divergence": divergence, "batches": result.batches,
                                   "timesteps": result.timesteps})
        return result.loss

    # -- files ---------------------------------------------------------------------------------
    def _save_numbered(self, name: str, kind: str) -> Path:
        self._catch_up()  # a NaN step stops the run before its weights are written
        epoch = min(self.pos.epoch, self.plan.epochs)
        path = self._write(self.output_dir / name, kind, epoch)
        if self.cfg.save_state:
            self._save_state(name, after_epoch=kind == "epoch")
        return path

    def _save_state(self, lora_name: str, after_epoch: bool) -> Path:
        """The state folder beside a LoRA file; after an epoch's end it points at the next epoch's start."""
        pos = LoopPosition(self.pos.epoch + 1, 0, self.pos.global_step) if after_epoch else self.pos
        folder = self.output_dir / run_state.state_folder_name(lora_name, self.ext)
        if not self.is_main:
            return folder
        extra = {"recorder": self.recorder.state_dict(), "epoch_losses": list(self.epoch_losses),
                 "validation_losses": [list(v) for v in self.validation_losses],
                 "nan_steps": self.nan_steps, "num_processes": self.world}
        if self.ema is not None:
            extra["ema"] = self.ema.state_dict()
        run_state.save_state(folder, self.parts, dataclasses.asdict(pos), extra)
        self.events.on_save({"path": str(folder), "kind": "state", "epoch": min(pos.epoch, self.plan.epochs),
                             "step": pos.global_step})
        return folder

    def _drop_states(self, pruned: list[Path]) -> None:
        """State folders go with their pruned LoRA files (sd-scripts' save_last_n_* also drops states)."""
        for path in pruned:
            shutil.rmtree(path.parent / run_state.state_folder_name(path.name, self.ext), ignore_errors=True)
            ema_file_path(path).unlink(missing_ok=True)  # the EMA file goes with its LoRA file

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """The loop's own bookkeeping from a state saved by `_save_state`."""
        self.recorder.load_state_dict(state["recorder"])
        self.epoch_losses = [float(x) for x in state.get("epoch_losses", [])]
        self.nan_steps = int(state.get("nan_steps", 0))
        self.validation_losses = [(int(e), float(v)) for e, v in state.get("validation_losses", [])]

    def _save_final(self, stopped: bool) -> Path:
        self._catch_up()
        name = f"{self.cfg.output_name}-interrupted.{self.ext}" if stopped else saving.final_file_name(self.cfg.output_name, self.ext)
        epoch = min(self.pos.epoch, self.plan.epochs) if stopped else self.plan.epochs
        path = self._write(self.output_dir / name, "interrupted" if stopped else "final", epoch)
        if not stopped and self.is_main:
            self.epoch_scores.maybe(epoch, path)  # the last epoch's file is the final one
        if stopped or self.cfg.save_state or self.cfg.save_state_on_train_end:
            self._save_state(saving.final_file_name(self.cfg.output_name, self.ext), after_epoch=False)
        return path

    def _write(self, path: Path, kind: str, epoch: int) -> Path:
        if not self.is_main:
            return path
        md = self.metadata.for_file(epoch=epoch, steps=self.pos.global_step)
        saving.write_lora(self.parts.network, path, self.ext, self.save_dtype, md)
        if path not in self.files:
            self.files.append(path)
        if self.ema is not None:
            ema_path = ema_file_path(path)
            saving.write_tensors(self.ema.tensors(self.parts.network), ema_path, self.ext, self.save_dtype,
                                 self.ema.metadata(md))
            self.ema_files = [f for f in self.ema_files if f != ema_path] + [ema_path]
            self.events.on_save({"path": str(ema_path), "kind": f"{kind} ema", "epoch": epoch, "step": self.pos.global_step})
        self.files = [f for f in self.files if f.exists()]
        self.events.on_save({"path": str(path), "kind": kind, "epoch": epoch, "step": self.pos.global_step})
        return path


def restore_ema(trainer: Trainer, folder: Path, saved: dict[str, Any], events: Events) -> None:
    """The EMA from the state; a state saved without one starts the average from the resumed weights."""
    if trainer.ema is None:
        return
    if saved.get("ema") is None:
        trainer.ema = LoraEMA(trainer.parts.network, trainer.ema.settings)
        events.on_log({"message": f"{folder} holds no EMA (saved without --ema_decay): the EMA starts from the resumed weights"})
        return
    run_state.restore_part(folder, "EMA weights", trainer.ema.load_state_dict, saved["ema"])


def train(config: TrainConfig, events: Events | None = None, commands: Commands | None = None) -> TrainResult:
    """Validate, plan, build and run one training; raises our errors, never exits."""
    events = events or Events()
    warnings = validate(config)
    preflight.check_writable(config)
    check_group_lrs(config.optimizer_type, config.unet_lr, config.text_encoder_lr, config.learning_rate,
                    not config.network_train_text_encoder_only, not config.network_train_unet_only)
    resume_from = run_state.resolve_resume(config) if config.resume else None
    seed = config.seed
    if resume_from is not None and seed is None:
        seed = run_state.read_saved_config(resume_from).get("seed")
    cfg = dataclasses.replace(config, seed=pick_seed(seed))
    if resume_from is not None:
        for change in run_state.check_config(resume_from, cfg):
            warnings.append(f"resumed with a changed setting: {change}")
    world, rank = distributed.process_info()
    if rank != 0:
        events = Events()  # only the main process reports and writes
    # The dataset is scanned before the output folder is created: a run that cannot start leaves nothing behind.
    prepared = prepare_data(cfg, num_processes=world)
    if not cfg.output_dir or rank != 0:
        return _train_prepared(cfg, prepared, events, commands, resume_from, warnings)
    acquired = False
    try:
        with output_lock(cfg.output_dir) as lock_notes:
            acquired = True
            for note in lock_notes:
                events.on_log({"message": note})
            return _train_prepared(cfg, prepared, events, commands, resume_from, warnings)
    except OSError as exc:
        if acquired:
            raise
        raise TrainingError(f"cannot create the lock file in {cfg.output_dir}: {exc.strerror or exc}", [
            "training did not start; free disk space or choose another --output_dir"]) from None


def _train_prepared(cfg: TrainConfig, prepared: PreparedData, events: Events, commands: Commands | None,
                    resume_from: Path | None, warnings: list[str]) -> TrainResult:
    """Plan, build (and restore a saved state into) the run, then train."""
    plan = prepared.plan
    events.on_plan({**plan.to_dict(), "text": format_plan(plan), "warnings": warnings, "seed": cfg.seed})
    if plan.total_steps < 1:
        raise DatasetError("there is nothing to train on", ["the dataset folders hold no usable images; see the plan above"])
    parts = build_run(cfg, prepared, cfg.seed, events=events)
    for note in parts.notes:
        events.on_log({"message": note})
    n_params = sum(p.numel() for p in parts.trainable_params)
    for warning in preflight.space_warnings(cfg, n_params, plan.epochs, plan.total_steps):
        warnings.append(warning)
        events.on_log({"message": f"warning: {warning}"})
    trainer = Trainer(parts, events, commands)
    if resume_from is not None:
        saved = run_state.load_train_state(resume_from)
        run_state.check_train_state(resume_from, saved, plan)
        run_state.check_processes(resume_from, saved, trainer.world)
        for note in run_state.restore(resume_from, parts, saved):
            events.on_log({"message": note})
        trainer.pos = LoopPosition(**saved["position"])
        run_state.restore_part(resume_from, "loss history", trainer.load_extra_state, saved)
        restore_ema(trainer, resume_from, saved, events)
        events.on_log({"message": f"resumed from {resume_from} at epoch {trainer.pos.epoch}, step {trainer.pos.global_step}"})
    result = trainer.run()
    distributed.finish(trainer.world)  # on success only: after an error another process may never arrive
    result.warnings = warnings + result.warnings
    return result
