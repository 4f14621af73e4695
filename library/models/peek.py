"""What a model name or path is, read from headers and configs only: no tensor data is loaded.

The VRAM estimate in the plan and the GUI's model picker must know the family before any
weights load (an SDXL checkpoint is 7 GB): a safetensors header gives every key and shape,
which is all `architecture.detect_ldm` needs, and a diffusers folder's config.json files are
what `architecture.detect_diffusers` reads. A pickled `.ckpt` cannot be read without
unpickling it, so it is reported as unknown rather than guessed.
"""
from __future__ import annotations

import json
from pathlib import Path

from library.errors import ModelLoadError
from library.models.architecture import Detection, detect_diffusers, detect_ldm
from library.models.configs import SD2_768_V_FAMILY, SDXL_FAMILY, architecture_of_config

# The shipped configs whose shapes stand for a detected family (SD2's 512-base and 768-v share their shapes).
CONFIGS_OF_ARCHITECTURE = {"sd1": "sd15", "sd2": SD2_768_V_FAMILY, "sdxl": SDXL_FAMILY}


def peek_model(name_or_path: str) -> Detection | None:
    """The family of a built-in name, safetensors file or diffusers folder; None for a `.ckpt` or a missing path.

    A file that is another kind of model (FLUX, SD3, the refiner, an inpainting UNet, a LoRA)
    raises the loader's own ModelLoadError, so the user reads the same words everywhere.
    """
    from library.models.builtin import BUILTIN_CONFIGS

    if name_or_path in BUILTIN_CONFIGS:
        family = BUILTIN_CONFIGS[name_or_path]
        return Detection(architecture_of_config(family), (f"built-in model `{name_or_path}` ({family} configs)",))
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        return detect_diffusers(path, *(_json(path / c / "config.json") if c else _json(path / "model_index.json")
                                        for c in (None, "unet", "text_encoder", "text_encoder_2")))
    if path.is_file() and path.suffix.lower() == ".safetensors":
        from library.safetensors_header import read_header

        entries = read_header(path, ModelLoadError, "model file").entries
        return detect_ldm(path, {k: tuple(v.get("shape", ())) for k, v in entries.items() if k != "__metadata__"})
    return None


def config_family_of(name_or_path: str, default: str = "sd15") -> str:
    """The shipped config family whose shapes a model has (`default` when it cannot be told without loading)."""
    from library.models.builtin import BUILTIN_CONFIGS

    if name_or_path in BUILTIN_CONFIGS:
        return BUILTIN_CONFIGS[name_or_path]
    try:
        detection = peek_model(name_or_path)
    except ModelLoadError:  # the loader reports it when training starts, in the same words
        return default
    return CONFIGS_OF_ARCHITECTURE[detection.architecture] if detection else default


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable config ({exc})", ["a diffusers folder needs valid JSON configs"]) from exc


__all__ = ["CONFIGS_OF_ARCHITECTURE", "config_family_of", "peek_model"]
