"""`sweep.json`: what a sweep is and how far it got, so an interrupted sweep continues where it stopped.

Written atomically after every change of a variant's status. A variant is
`pending`, `running` (started; a sweep killed hard leaves it so), `stopped`
(Ctrl-C: its state folder was saved), `failed` (its error is kept) or `finished`
(with its files and losses, which the ranking reads without loading anything).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from library.errors import ConfigError
from library.fileio import atomic_write_text

MANIFEST_NAME = "sweep.json"
MANIFEST_FORMAT = 1
PENDING, RUNNING, STOPPED, FAILED, FINISHED = "pending", "running", "stopped", "failed", "finished"


@dataclass
class VariantRecord:
    name: str
    values: dict[str, Any]
    output_dir: str
    output_name: str
    status: str = PENDING
    final_file: str | None = None
    files: list[str] = field(default_factory=list)
    ema_files: list[str] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    validation_losses: list[list[float]] = field(default_factory=list)  # [epoch, loss] at each epoch's end
    global_step: int = 0
    error: str | None = None


@dataclass
class Manifest:
    path: Path
    seed: int
    vary: list[list[Any]]  # [[field, [values...]], ...]
    base: dict[str, Any]  # the base config (JSON form) without the fields a sweep sets per variant
    variants: list[VariantRecord]

    def record(self, name: str) -> VariantRecord:
        return next(v for v in self.variants if v.name == name)

    def save(self) -> None:
        data = {"format": MANIFEST_FORMAT, "seed": self.seed, "vary": self.vary, "base": self.base,
                "variants": [asdict(v) for v in self.variants]}
        atomic_write_text(self.path, json.dumps(data, indent=1, default=str))


def load_manifest(path: Path) -> Manifest | None:
    """The manifest at `path`, or None when there is none; a damaged one is a ConfigError naming the file."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        variants = [VariantRecord(**v) for v in data["variants"]]
        return Manifest(path, int(data["seed"]), list(data["vary"]), dict(data["base"]), variants)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: cannot read the sweep's progress ({type(exc).__name__}: {str(exc)[:200]})", [
            ("it was not written by this lorasmith or is damaged; remove it to start the sweep afresh "
             "(finished variants' files stay, but will be trained again), or choose another --sweep_dir")]) from None


def differences(saved: Manifest, base: dict[str, Any], vary: list[list[Any]]) -> list[str]:
    """How the requested sweep differs from the one recorded (then it cannot continue)."""
    lines = []
    if json.loads(json.dumps(saved.vary)) != json.loads(json.dumps(vary, default=str)):
        lines.append(f"varied values: {saved.vary} -> {vary}")
    for key in sorted(set(saved.base) | set(base)):
        if saved.base.get(key) != base.get(key):
            lines.append(f"{key}: {saved.base.get(key)!r} -> {base.get(key)!r}")
    return lines
