"""One error family for everything a user can get wrong.

The CLI catches `LorasmithError` and prints its message on one screen, without a
traceback unless `--debug` is given. Library code raises these instead of
asserting or exiting, so callers (CLI, GUI, tests) decide how to report.
"""
from __future__ import annotations

from collections.abc import Iterable


class LorasmithError(Exception):
    """Base class: a problem the user can fix, described so they can fix it.

    `problems` holds one line per independent problem so that validation can
    report everything at once instead of one error per run.
    """

    def __init__(self, message: str, problems: Iterable[str] = ()) -> None:
        self.problems = list(problems)
        full = message
        if self.problems:
            full += "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(full)
        self.summary = message


class ConfigError(LorasmithError):
    """A config value, file or flag is wrong (names the field, value and fix)."""


class ModelLoadError(LorasmithError):
    """A base model path or file cannot be used."""


class LoRAFileError(LorasmithError):
    """A LoRA file is damaged, of another architecture, or inconsistent."""


class DatasetError(LorasmithError):
    """Images, captions or dataset folders cannot be used as they are."""


class TrainingError(LorasmithError):
    """Training cannot continue (non-finite loss, failed write, ...)."""


class SamplingError(LorasmithError):
    """A prompt, sampler name, grid axis or value list is wrong."""
