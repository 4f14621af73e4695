"""The LoRA trainer: `train(config, events=None, commands=None) -> TrainResult`.

Public API:
    train, TrainResult, Trainer, LoopPosition   (library.training.trainer)
    Events, Commands, JsonLinesEvents, RecordingEvents, MultiEvents   (library.training.events)
    build_run, RunParts   (library.training.setup)

Names are imported on first use (library.lazy), so registering a command loads no torch.
"""
from __future__ import annotations

from library.lazy import lazy_exports

_EXPORTS = {
    "train": "trainer", "TrainResult": "trainer", "Trainer": "trainer", "LoopPosition": "trainer",
    "Events": "events", "Commands": "events", "JsonLinesEvents": "events", "RecordingEvents": "events",
    "MultiEvents": "events", "build_run": "setup", "RunParts": "setup",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
