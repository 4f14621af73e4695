"""Applying a preset to a filled form: what changes, what the user's own paths keep, what Undo restores."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gui.form import FIELD_NAMES, config_to_values
from library.config import TrainConfig

# Where the user's data and results are: a preset never overwrites these once the user set them.
KEEP_FIELDS = ("pretrained_model_name_or_path", "vae", "train_data_dir", "reg_data_dir", "conditioning_data_dir",
               "dataset_config", "output_dir", "output_name", "logging_dir", "sample_prompts", "network_weights", "resume")
_DEFAULTS = config_to_values(TrainConfig())


def user_set(name: str, value: Any) -> bool:
    return value not in (None, "") and value != _DEFAULTS[name]


def apply_preset(current: Mapping[str, Any], preset: TrainConfig) -> tuple[dict[str, Any], list[str], list[str]]:
    """(new form values, names that changed, names kept from the user) for loading `preset` over `current`."""
    wanted = config_to_values(preset)
    new = dict(current)
    changed, kept = [], []
    for name in FIELD_NAMES:
        value = wanted[name]
        if name in KEEP_FIELDS and user_set(name, current.get(name)):
            if current.get(name) != value:
                kept.append(name)
            continue
        if not same(current.get(name), value):
            changed.append(name)
        new[name] = value
    return new, changed, kept


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def differs(current: Mapping[str, Any], applied: Mapping[str, Any]) -> list[str]:
    """Fields whose value now differs from what the preset put there (kept user paths not counted)."""
    return [n for n, v in applied.items() if n in current and not same(current[n], v)]
