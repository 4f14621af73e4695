"""What the picked base model is, read cheaply, and what that means for the form.

The family (SD1.x, SD2.x 512-base / 768-v, SDXL), the prediction type and why are
read without loading any weights: a `.safetensors` file's header (key names and
shapes, `library.safetensors_header`), a diffusers folder's JSON configs, a built-in's
shipped config. The decisions are the loader's own (`library.models.architecture`:
`detect_ldm`, `detect_diffusers`, `resolve_prediction`), so a model the loader refuses
(FLUX, SD3, the SDXL refiner, inpainting UNets, ...) shows the loader's words here.

The form then asks the config object which options apply to that family
(`library.config.applies_to`, from each option's `families`): the others are hidden,
unless they hold a value, in which case they stay in view with a warning.
Pure functions, no Gradio.
"""
from __future__ import annotations

import html
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from library.config import BUILTIN_MODEL_NAMES, TrainConfig, applies_to, family_options, parse_resolution
from library.errors import LorasmithError, ModelLoadError

MODEL_FIELD = "pretrained_model_name_or_path"
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt")
MAX_LISTED = 300  # a models folder with more entries lists the first ones found
MAX_DEPTH = 3  # subfolder levels searched below the models folder
# Training sizes the families were trained at: the resolution hint (SD2.x 512-base stays at 512).
NATIVE_RESOLUTION = {("sdxl", "epsilon"): 1024, ("sdxl", "v_prediction"): 1024, ("sd2", "v_prediction"): 768}


@dataclass(frozen=True)
class ModelInfo:
    """What a model field names, as far as can be told without loading it."""

    source: str
    family: str | None  # "sd1" | "sd2" | "sdxl"; None when refused or not readable cheaply
    label: str  # "SD1.x", "SD2.x 512-base", "SD2.x 768-v", "SDXL"; "" when family is None
    prediction_type: str | None = None
    prediction_why: str = ""
    prediction_certain: bool = True
    evidence: tuple[str, ...] = ()
    refusal: str | None = None  # the loader's refusal: training would stop with this
    unknown: str | None = None  # why the family could not be read here (it is read when the run loads the model)
    builtin: bool = False


def family_label(family: str, prediction_type: str | None) -> str:
    """The family as users name it: SD2.x is 512-base (epsilon) or 768-v (v-prediction)."""
    if family == "sd2":
        return "SD2.x 768-v" if prediction_type == "v_prediction" else "SD2.x 512-base"
    name = {"sd1": "SD1.x", "sdxl": "SDXL"}[family]
    return name + (" (v-prediction)" if prediction_type == "v_prediction" else "")


def error_text(exc: LorasmithError) -> str:
    """A LorasmithError on one line: its summary, then its problems."""
    return "; ".join([exc.summary, *exc.problems])


# --- reading: library.models.peek (the loader's detection, no weights read) ---
@lru_cache(maxsize=64)
def _detect_cached(path: str, stamp: tuple) -> tuple[Any, str | None, str | None] | str:
    """(detection, what the model says of its prediction, where it says it), or the refusal text."""
    del stamp  # part of the cache key only: a replaced file is read again
    try:
        from library.models.peek import peek_model

        peek = peek_model(path)
        if peek is None:
            raise ModelLoadError(f"{path}: no such file or folder", ["give a model file, a diffusers folder or a built-in name"])
        return peek.detection, peek.said_prediction, peek.said_where
    except LorasmithError as exc:
        return error_text(exc)


def _stamp(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return ()
    if path.is_dir():  # the configs decide; their times stand for the folder
        return tuple((c, (path / c).stat().st_mtime_ns) for c in ("model_index.json", "unet/config.json",
                                                                   "scheduler/scheduler_config.json")
                     if (path / c).exists())
    return (st.st_size, st.st_mtime_ns)


def describe_model(value: str | None, resolved: Path | None = None, *, v2: bool = False,
                   v_parameterization: bool = False) -> ModelInfo | None:
    """What `value` (a built-in name, or a file/folder already resolved to `resolved`) is; None when it
    names nothing that exists (the form's own check says so)."""
    if not value or not str(value).strip():
        return None
    value = str(value).strip()
    builtin = value in BUILTIN_MODEL_NAMES
    if not builtin:
        path = resolved or Path(value).expanduser()
        if not path.exists():
            return None
        key = str(path)
        stamp = _stamp(path)
    else:
        key, stamp = value, ()
    try:
        found = _detect_cached(key, stamp)
    except (OSError, RuntimeError, ValueError, EOFError) as exc:  # an unreadable .ckpt: the run will say more
        return ModelInfo(value, None, "", unknown=f"cannot read its keys here ({type(exc).__name__}); "
                         "the family is read when the run loads it", builtin=builtin)
    if isinstance(found, str):
        return ModelInfo(value, None, "", refusal=found, builtin=builtin)
    detection, said, where = found
    from library.models.architecture import resolve_prediction

    prediction = resolve_prediction(detection.architecture, said, where, v2=v2 and detection.architecture == "sd2",
                                    v_parameterization=v_parameterization)
    return ModelInfo(value, detection.architecture, family_label(detection.architecture, prediction.prediction_type),
                     prediction.prediction_type, prediction.source, prediction.certain,
                     tuple(detection.evidence) + tuple(detection.notes), builtin=builtin)


# --- what it means for the form ---------------------------------------------------------------------------
def field_visibility(family: str | None, values: Mapping[str, Any]) -> dict[str, bool]:
    """Each family-limited option → whether it is shown: when it applies, or when it holds a value."""
    defaults = TrainConfig()
    return {name: applies_to(name, family) or _is_set(name, values.get(name), defaults)
            for name in family_options()}


def _is_set(name: str, value: Any, defaults: TrainConfig) -> bool:
    default = getattr(defaults, name)
    if value in (None, "") and default is None:
        return False
    return value != default


def family_issues(info: ModelInfo | None, cfg: TrainConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(field → error, field → warning) that follow from the picked model.

    A refused model is an error on the model field (training would stop at loading);
    --v2 on another family is one too (the loader refuses it); an option set for another
    family is a warning (it changes nothing there); a resolution below the family's
    training size is a hint.
    """
    errors: dict[str, str] = {}
    warnings: dict[str, str] = {}
    if info is None:
        return errors, warnings
    if info.refusal:
        errors[MODEL_FIELD] = info.refusal
        return errors, warnings
    if info.family is None:
        return errors, warnings
    from library.models.family import family_of

    display = family_of(info.family).display
    if cfg.v2 and info.family != "sd2":
        errors["v2"] = (f"--v2 is set but {info.source} is a {display} model; drop --v2 "
                        "(lorasmith detects SD2.x from the weights)")
    defaults = TrainConfig()
    for name, families in family_options().items():
        if name in errors or applies_to(name, info.family) or not _is_set(name, getattr(cfg, name), defaults):
            continue
        wanted = " or ".join(family_of(f).display for f in families)
        warnings[name] = (f"applies to {wanted} models only; {info.source} is a {display} model, "
                          f"so it changes nothing here: reset it, or pick a {wanted} model")
    hint = resolution_hint(info, cfg.resolution)
    if hint:
        warnings["resolution"] = hint
    return errors, warnings


def resolution_hint(info: ModelInfo, resolution: Any, fix: str = "resolution") -> str | None:
    """A suggestion (never a change) when the resolution is below the size the family was trained at."""
    native = NATIVE_RESOLUTION.get((info.family, info.prediction_type))
    if native is None or info.builtin:  # the built-in test models were trained at no size
        return None
    try:
        width, height = parse_resolution(resolution)
    except LorasmithError:
        return None
    if max(width, height) >= native:
        return None
    preset = " (the person-sdxl-adamw8bit preset does)" if info.family == "sdxl" and fix == "resolution" else ""
    return (f"{width}x{height} is below the {native}x{native} that {info.label} models were trained at; "
            f"set {fix} to {native}{preset}")


def info_html(info: ModelInfo | None, elem_id: str = "model-facts") -> str:
    """The line under the model field: family, prediction type and why; or why it cannot be used."""
    esc = html.escape
    if info is None:
        return (f'<div id="{elem_id}" data-family="" class="ls-model-facts">Pick a built-in model, a checkpoint file '
                'or a diffusers folder: its family is shown here.</div>')
    if info.refusal:
        return (f'<div id="{elem_id}" data-family="" data-refused="1" class="ls-model-facts ls-error">'
                f'Cannot be trained: {esc(info.refusal)}</div>')
    if info.family is None:
        return f'<div id="{elem_id}" data-family="" class="ls-model-facts">{esc(info.unknown or "")}</div>'
    certain = "" if info.prediction_certain else " ls-warning"
    evidence = "; ".join(info.evidence)
    return (f'<div id="{elem_id}" data-family="{esc(info.family)}" data-prediction="{esc(info.prediction_type or "")}"'
            f' class="ls-model-facts"><b>{esc(info.label)}</b> · predicts <b>{esc(info.prediction_type or "?")}</b>'
            f'<span class="ls-why{certain}"> ({esc(info.prediction_why)})</span>'
            + (f'<div class="ls-evidence">recognised by: {esc(evidence)}</div>' if evidence else "") + "</div>")


# --- the picker's choices ---------------------------------------------------------------------------------
def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file()


def list_models(folder: str | os.PathLike[str] | None, guard) -> list[str]:
    """The built-in names, then every `.safetensors`/`.ckpt` file and diffusers folder under `folder`
    (inside the allowed folders, at most MAX_DEPTH levels down, MAX_LISTED entries), sorted by path."""
    found: list[str] = []
    if folder and str(folder).strip() and guard.allows(folder):
        root = guard.resolve(folder)
        if root.is_dir():
            found = _scan(root, guard)
    return [*BUILTIN_MODEL_NAMES, *sorted(found)]


def _scan(root: Path, guard) -> list[str]:
    out: list[str] = []
    stack = [(root, 0)]
    while stack and len(out) < MAX_LISTED:
        folder, depth = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_dir():
                if not guard.allows(path):
                    continue
                if is_diffusers_folder(path):
                    out.append(str(path))
                elif depth + 1 < MAX_DEPTH:
                    stack.append((path, depth + 1))
            elif path.suffix.lower() in MODEL_FILE_SUFFIXES and entry.is_file() and guard.allows(path) \
                    and not _is_network_file(str(path), _stamp(path)):
                out.append(str(path))
    return out[:MAX_LISTED]


@lru_cache(maxsize=1024)
def _is_network_file(path: str, stamp: tuple) -> bool:
    """A LoRA / LyCORIS / embedding file (not a base model), from its header's key names; .ckpt files are kept."""
    del stamp
    if not path.lower().endswith(".safetensors"):
        return False
    from library.safetensors_header import read_header

    try:
        keys = read_header(path).entries
    except LorasmithError:
        return False  # listed: picking it shows what is wrong with it
    return not any(k.startswith(("model.diffusion_model.", "unet.", "down_blocks.")) for k in keys) and any(
        k.startswith(("lora_", "lycoris_")) or k in ("emb_params", "clip_l", "clip_g") for k in keys)
