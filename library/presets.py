"""Named JSON presets: built-in ones shipped in `presets/`, users' own in a user folder.

A preset is sparse (only what differs from the defaults), so a preset written
today keeps meaning the same thing when a default changes later.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from library.config import TrainConfig
from library.config_io import config_from_mapping, config_to_preset, read_config_file
from library.errors import ConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,79}$")


def builtin_dir() -> Path:
    return Path(str(resources.files("presets")))


def user_dir() -> Path:
    home = os.environ.get("LORASMITH_HOME")
    base = Path(home) if home else Path.home() / ".lorasmith"
    return base / "presets"


def check_name(name: str) -> str:
    if not _NAME_RE.match(name or ""):
        raise ConfigError(f"preset name {name!r} is not allowed", ["use letters, digits, space, '_', '-' or '.', at most 80 characters"])
    return name


def list_presets() -> list[dict[str, Any]]:
    """Every preset with its name, source ('builtin' or 'user') and description."""
    found = []
    for source, folder in (("builtin", builtin_dir()), ("user", user_dir())):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                description = str(data.get("description", "")) if isinstance(data, dict) else ""
            except (OSError, ValueError, RecursionError):  # ValueError covers bad UTF-8 and JSON
                description = "(unreadable)"
            found.append({"name": path.stem, "source": source, "path": str(path), "description": description})
    return found


def preset_path(name: str) -> Path:
    check_name(name)
    for folder in (user_dir(), builtin_dir()):
        path = folder / f"{name}.json"
        if path.is_file():
            return path
    known = ", ".join(p["name"] for p in list_presets()) or "none"
    raise ConfigError(f"preset {name!r} not found", [f"known presets: {known}"])


def load_preset(name_or_path: str, base: TrainConfig | None = None) -> TrainConfig:
    path = Path(name_or_path) if name_or_path.endswith(".json") else preset_path(name_or_path)
    cfg = config_from_mapping(read_config_file(path), source=f"preset {path}", base=base)
    return _files_beside(cfg, path.parent)


def _files_beside(cfg: TrainConfig, folder: Path) -> TrainConfig:
    """A preset names the files it ships (its sample prompts) relative to itself, not to where it is run."""
    prompts = cfg.sample_prompts
    if prompts and not Path(prompts).is_absolute() and (folder / prompts).is_file():
        return dataclasses.replace(cfg, sample_prompts=str(folder / prompts))
    return cfg


def save_user_preset(cfg: TrainConfig, name: str, description: str = "", *, overwrite: bool = False) -> Path:
    from library.fileio import atomic_write_text

    check_name(name)
    if (builtin_dir() / f"{name}.json").exists():
        raise ConfigError(f"preset {name!r} is built in and read-only", ["save under another name"])
    path = user_dir() / f"{name}.json"
    if path.exists() and not overwrite:
        raise ConfigError(f"user preset {name!r} already exists", ["choose another name or overwrite it"])
    atomic_write_text(path, json.dumps(config_to_preset(cfg, name=name, description=description), indent=2) + "\n")
    return path


def delete_user_preset(name: str) -> None:
    path = user_dir() / f"{check_name(name)}.json"
    if not path.is_file():
        raise ConfigError(f"user preset {name!r} not found", ["built-in presets cannot be deleted"])
    path.unlink()


def rename_user_preset(old: str, new: str) -> Path:
    src = user_dir() / f"{check_name(old)}.json"
    dst = user_dir() / f"{check_name(new)}.json"
    if not src.is_file():
        raise ConfigError(f"user preset {old!r} not found")
    if dst.exists() or (builtin_dir() / f"{new}.json").exists():
        raise ConfigError(f"a preset named {new!r} already exists")
    data = json.loads(src.read_text(encoding="utf-8"))
    data["name"] = new
    from library.fileio import atomic_write_text

    atomic_write_text(dst, json.dumps(data, indent=2) + "\n")
    src.unlink()
    return dst
