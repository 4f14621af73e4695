"""The LoRA trainer: `train(config, events=None, commands=None) -> TrainResult`.

Public API (imported lazily, so `lorasmith --help` does not load torch):
    train, TrainResult, Trainer, LoopPosition   (library.training.trainer)
    Events, Commands, JsonLinesEvents, RecordingEvents, MultiEvents   (library.training.events)
    build_run, RunParts   (library.training.setup)
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train": "trainer", "TrainResult": "trainer", "Trainer": "trainer", "LoopPosition": "trainer",
    "Events": "events", "Commands": "events", "JsonLinesEvents": "events", "RecordingEvents": "events",
    "MultiEvents": "events", "build_run": "setup", "RunParts": "setup",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'library.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"library.training.{_EXPORTS[name]}"), name)
