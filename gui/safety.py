"""Which folders the page may touch.

The GUI runs on the user's machine with the user's rights, and with
`--listen`/`--share` other people can type paths into it.  Every path that
comes from the browser (form fields, tool folders, files to show) is checked
against the folders the user allowed when starting the GUI; nothing outside
them is read, written, listed or served.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from library.config import TrainConfig, option_fields, spec_of
from library.errors import ConfigError


def builtin_model_names() -> tuple[str, ...]:
    try:
        from library.models import builtin_names
    except ImportError:
        return ("tiny",)
    return tuple(builtin_names())


@dataclass(frozen=True)
class PathGuard:
    """Allowed root folders; `check` resolves a path (symlinks included) and refuses the rest."""

    roots: tuple[Path, ...]

    @classmethod
    def from_dirs(cls, dirs: Iterable[str | os.PathLike[str]]) -> PathGuard:
        roots = tuple(Path(d).expanduser().resolve() for d in dirs)
        if not roots:
            raise ConfigError("The GUI needs at least one allowed folder", ["pass --allow DIR"])
        return cls(roots)

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """Relative paths are taken relative to the first allowed folder."""
        p = Path(path).expanduser()
        if not p.is_absolute():
            p = self.roots[0] / p
        return p.resolve()

    def allows(self, path: str | os.PathLike[str]) -> bool:
        real = self.resolve(path)
        return any(real == root or real.is_relative_to(root) for root in self.roots)

    def check(self, path: str | os.PathLike[str], what: str) -> Path:
        """The resolved path, or ConfigError naming the field, the path and the allowed folders."""
        if not self.allows(path):
            raise ConfigError(
                f"{what}: {str(path)!r} is outside the folders this GUI may use",
                [f"allowed: {', '.join(str(r) for r in self.roots)}",
                 "move the files there or restart `lorasmith gui --allow DIR`"],
            )
        return self.resolve(path)

    def config_problems(self, cfg: TrainConfig) -> list[str]:
        """One line per path field of `cfg` that points outside the allowed folders."""
        problems = []
        builtins = builtin_model_names()
        for f in option_fields():
            value = getattr(cfg, f.name)
            if spec_of(f).kind is None or not value:
                continue
            if f.name == "pretrained_model_name_or_path" and value in builtins:
                continue
            if f.name == "resume" and value == "latest":
                continue
            if not self.allows(value):
                problems.append(f"{f.name}: {value!r} is outside the allowed folders ({', '.join(map(str, self.roots))})")
        return problems

    def absolutize(self, cfg: TrainConfig) -> TrainConfig:
        """The config with relative path fields made absolute (the trainer runs in another folder)."""
        import dataclasses

        builtins = builtin_model_names()
        updates = {}
        for f in option_fields():
            value = getattr(cfg, f.name)
            if spec_of(f).kind is None or not value or (f.name == "pretrained_model_name_or_path" and value in builtins):
                continue
            if f.name == "resume" and value == "latest":
                continue
            updates[f.name] = str(self.resolve(value))
        return dataclasses.replace(cfg, **updates)
