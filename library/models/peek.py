"""What a model name or path is, read from headers and configs only: no tensor data is loaded.

The VRAM estimate in the plan and the GUI's model picker must know the family before any
weights load (an SDXL checkpoint is 7 GB): a safetensors header gives every key and shape,
which is all `architecture.detect_ldm` needs; a pickled `.ckpt` is opened memory-mapped with
the restricted unpickler (no data read, no code run); a diffusers folder's config.json files
are what `architecture.detect_diffusers` reads. The decisions are the loader's own functions,
so a refused model gets the loader's words.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from library.errors import ModelLoadError
from library.models.architecture import Detection, detect_diffusers, detect_ldm
from library.models.configs import SD2_768_V_FAMILY, SDXL_FAMILY, architecture_of_config, load_shipped_config

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# The shipped configs whose shapes stand for a detected family (SD2's 512-base and 768-v share their shapes).
CONFIGS_OF_ARCHITECTURE = {"sd1": "sd15", "sd2": SD2_768_V_FAMILY, "sdxl": SDXL_FAMILY}


@dataclass(frozen=True)
class Peek:
    """The detected family, and the prediction type when the model itself says it (and where)."""

    detection: Detection
    said_prediction: str | None = None
    said_where: str | None = None


def peek_model(name_or_path: str) -> Peek | None:
    """What a built-in name, weight file or diffusers folder is; None for a path that does not exist.

    Another kind of model (FLUX, SD3, the refiner, an inpainting UNet, a LoRA) or an unreadable
    file raises the loader's ModelLoadError.
    """
    from library.models.builtin import BUILTIN_CONFIGS

    if name_or_path in BUILTIN_CONFIGS:
        return _builtin(name_or_path, BUILTIN_CONFIGS[name_or_path])
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        return _file(path)
    return None


def config_family_of(name_or_path: str, default: str = "sd15") -> str:
    """The shipped config family whose shapes a model has (`default` when it cannot be told)."""
    from library.models.builtin import BUILTIN_CONFIGS

    if name_or_path in BUILTIN_CONFIGS:
        return BUILTIN_CONFIGS[name_or_path]
    try:
        peek = peek_model(name_or_path)
    except ModelLoadError:  # the loader reports it when training starts, in the same words
        return default
    return CONFIGS_OF_ARCHITECTURE[peek.detection.architecture] if peek else default


def _builtin(name: str, config: str) -> Peek:
    prediction = load_shipped_config(config, "scheduler").get("prediction_type", "epsilon")
    detection = Detection(architecture_of_config(config), (f"the built-in {name} ({config} config)",))
    return Peek(detection, prediction, f"the built-in's scheduler config ({config})")


def _json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc})", ["restore the file from the model's source"]) from None
    return data if isinstance(data, dict) else None


def _folder(folder: Path) -> Peek:
    if not ((folder / "model_index.json").is_file() or (folder / "unet").is_dir()):
        raise ModelLoadError(f"{folder} is a folder but not a diffusers model folder", [
            "a diffusers folder has model_index.json and unet/, vae/, text_encoder/ subfolders"])
    configs = {c: _json(folder / c / "config.json") for c in ("unet", "text_encoder", "text_encoder_2")}
    detection = detect_diffusers(folder, _json(folder / "model_index.json"), configs["unet"],
                                 configs["text_encoder"], configs["text_encoder_2"])
    said = (_json(folder / "scheduler" / "scheduler_config.json") or {}).get("prediction_type")
    return Peek(detection, said, "scheduler/scheduler_config.json `prediction_type`" if said else None)


def _pickle_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key → shape of a `.ckpt` read memory-mapped with the restricted unpickler (no data read, no code run)."""
    import pickle

    import torch

    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise ModelLoadError(f"refusing to load {path}: it contains pickled Python objects that would run code when loaded",
                             ["get a .safetensors version of this model from its publisher, which cannot contain code"]) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not a readable PyTorch checkpoint ({exc})",
                             ["re-download the file, or use a .safetensors version"]) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} holds a {type(data).__name__}, not a dictionary of weights")
    return {k: tuple(v.shape) for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _file(path: Path) -> Peek:
    from library.safetensors_header import read_header

    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        header = read_header(path, ModelLoadError, "model file")
        shapes = {k: tuple(e["shape"]) for k, e in header.entries.items()}
    elif suffix in PICKLE_SUFFIXES:
        shapes = _pickle_shapes(path)
    else:
        raise ModelLoadError(f"{path}: unsupported weight file type {suffix or '(no suffix)'!r}",
                             ["use a .safetensors file (preferred), a .ckpt/.pt file, or a diffusers folder"])
    detection = detect_ldm(path, shapes)
    return Peek(detection, detection.file_prediction_type, detection.prediction_evidence)


__all__ = ["CONFIGS_OF_ARCHITECTURE", "PICKLE_SUFFIXES", "Peek", "config_family_of", "peek_model"]
