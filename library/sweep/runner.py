"""Run a sweep's variants one after another, in this process, through the same `train()` as `lorasmith train`.

In-process rather than one subprocess per variant: the trainer already builds every
run afresh (its own Accelerator, model, network and RNG), so nothing leaks from one
variant into the next, and torch and the model code are imported once.

Resuming: `sweep.json` (library.sweep.manifest) records each variant's status. Run
the same command again and finished variants are skipped; a variant that was
stopped (Ctrl-C saves its state folder) or killed after saving a state
(`--save_state`) resumes from its latest state, bit-exact; one with no saved state
is trained again from the start.
"""
from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from library.config import TrainConfig
from library.errors import ConfigError, LorasmithError
from library.sweep.manifest import (
    FAILED,
    FINISHED,
    MANIFEST_NAME,
    PENDING,
    RUNNING,
    STOPPED,
    Manifest,
    VariantRecord,
    differences,
    load_manifest,
)
from library.sweep.variants import Variant, check_variants, expand
from library.training.ema import ema_file_path
from library.training.events import Commands, Events

# Fields that each variant sets for itself, or that may change between two invocations of one sweep.
PER_VARIANT = frozenset({"output_dir", "output_name", "log_prefix", "resume", "progress_file"})


@dataclass
class SweepOutcome:
    manifest: Manifest
    variants: list[Variant]
    stopped: bool = False  # a variant was stopped (Ctrl-C): run the command again to continue

    @property
    def finished(self) -> list[VariantRecord]:
        return [r for r in self.manifest.variants if r.status == FINISHED]


def sweep_base(base: TrainConfig, vary: list[tuple[str, list[Any]]]) -> dict[str, Any]:
    """The part of the base config that must stay the same for a sweep to continue (JSON form)."""
    from library.training.state import FREE_TO_CHANGE, config_dict

    varied = {f for f, _ in vary}
    return {k: v for k, v in config_dict(base).items() if k not in PER_VARIANT | FREE_TO_CHANGE | varied}


def sweep_dir_of(base: TrainConfig, sweep_dir: str | None) -> Path:
    folder = sweep_dir or base.output_dir
    if not folder:
        raise ConfigError("a sweep needs --output_dir (or --sweep_dir): each variant trains into a folder inside it")
    return Path(folder).expanduser()


def check_sweep_dir(base: TrainConfig, sweep_dir: Path) -> None:
    """Variant folders inside a dataset folder would be read as image folders by the next variant."""
    for name in ("train_data_dir", "reg_data_dir"):
        folder = getattr(base, name)
        if folder and Path(folder).expanduser().resolve() in [sweep_dir.resolve(), *sweep_dir.resolve().parents]:
            raise ConfigError(f"the sweep folder {sweep_dir} is inside {name} {folder}",
                              ["its variant folders would be read as dataset folders; choose an --output_dir outside it"])


def prepare_sweep(base: TrainConfig, vary: list[tuple[str, list[Any]]], sweep_dir: Path, *,
                  scan_data: bool = True) -> tuple[Manifest, list[Variant]]:
    """Expand and check every variant, then open (or create) the manifest. Nothing is trained here.

    A manifest of another sweep in the folder (other base settings or values) is refused with
    the differences listed; with no seed set, one seed is drawn once and used by every variant.
    """
    check_sweep_dir(base, sweep_dir)
    path = sweep_dir / MANIFEST_NAME
    saved = load_manifest(path)
    from library.training.rng import pick_seed

    seed = base.seed if base.seed is not None else (saved.seed if saved is not None else pick_seed(None))
    base = dataclasses.replace(base, seed=seed)
    variants = expand(base, vary, sweep_dir)
    check_variants(variants, scan_data=scan_data)
    vary_json = [[f, list(v)] for f, v in vary]
    identity = sweep_base(base, vary)
    if saved is not None:
        changes = differences(saved, identity, vary_json)
        if changes:
            raise ConfigError(f"{path}: this folder holds another sweep (started with other settings)", changes + [
                "run it with its own settings to continue it, or give this sweep another --sweep_dir / --output_dir"])
        return saved, variants
    manifest = Manifest(path, seed, json.loads(json.dumps(vary_json, default=str)), identity, [
        VariantRecord(v.name, {k: _plain(x) for k, x in v.values.items()}, v.config.output_dir, v.config.output_name)
        for v in variants])
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest.save()
    return manifest, variants


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def has_state(output_dir: Path) -> bool:
    from library.training.state import find_latest

    try:
        find_latest(output_dir)
        return True
    except ConfigError:
        return False


def epoch_files(cfg: TrainConfig) -> list[Path]:
    """The per-epoch files and the final file of a finished variant, in epoch order (EMA files not included)."""
    from library.training.saving import epoch_files_of, final_file_name

    out = Path(cfg.output_dir)
    ext = cfg.save_model_as
    files = epoch_files_of(out, cfg.output_name, ext)
    final = out / final_file_name(cfg.output_name, ext)
    return files + ([final] if final.exists() else [])


def run_sweep(manifest: Manifest, variants: list[Variant], *,
              events_for: Callable[[Variant], Events] | None = None, commands: Commands | None = None,
              log: Callable[[str], None] = print) -> SweepOutcome:
    """Train every variant not finished yet, in order; stop at the first variant stopped by a command."""
    from library.training.trainer import train

    commands = commands or Commands()
    for index, variant in enumerate(variants, 1):
        rec = manifest.record(variant.name)
        head = f"[{index}/{len(variants)}] {variant.name}"
        if rec.status == FINISHED and rec.final_file and Path(rec.final_file).exists():
            log(f"{head}: finished before, skipped")
            continue
        cfg = variant.config
        if rec.status != PENDING and has_state(variant.output_dir):
            cfg = dataclasses.replace(cfg, resume="latest")
            log(f"{head}: resuming from its latest saved state in {variant.output_dir}")
        elif rec.status != PENDING:
            log(f"{head}: no saved state from its earlier attempt ({rec.status}); training it from the start")
        else:
            log(f"{head}: training")
        rec.status, rec.error = RUNNING, None
        manifest.save()
        try:
            result = train(cfg, events_for(variant) if events_for else Events(), commands)
        except LorasmithError as exc:
            rec.status, rec.error = FAILED, str(exc)
            manifest.save()
            log(f"{head}: failed: {exc}")
            continue
        except BaseException as exc:  # KeyboardInterrupt or a bug: recorded, then raised unchanged
            rec.status, rec.error = STOPPED if isinstance(exc, KeyboardInterrupt) else FAILED, f"{type(exc).__name__}: {exc}"
            manifest.save()
            raise
        finally:
            _release_memory()
        if result.stopped:
            rec.status = STOPPED
            manifest.save()
            log(f"{head}: stopped at step {result.global_step}; run the same sweep command again to continue")
            return SweepOutcome(manifest, variants, stopped=True)
        rec.status = FINISHED
        rec.final_file = str(result.final_file) if result.final_file else None
        rec.files = [str(p) for p in epoch_files(cfg)]
        rec.ema_files = [str(ema_file_path(p)) for p in epoch_files(cfg) if ema_file_path(p).exists()]
        rec.epoch_losses = [float(x) for x in result.epoch_losses]
        rec.validation_losses = [[int(e), float(v)] for e, v in result.validation_losses]
        rec.global_step = result.global_step
        manifest.save()
        log(f"{head}: finished ({result.global_step} steps)")
    return SweepOutcome(manifest, variants)


def _release_memory() -> None:
    """The finished variant's model and caches are garbage; give the memory back before the next one."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass

