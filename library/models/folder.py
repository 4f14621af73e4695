"""Loading a diffusers pipeline folder (`unet/`, `vae/`, `text_encoder/`, ...).

We read each component's config and weights ourselves instead of calling
`from_pretrained`, so that nothing can reach the hub, `.bin` weights go through
the same code-free loader as `.ckpt` files, and fp16 variants are found.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTokenizer

from library.errors import ModelLoadError
from library.models.architecture import Detection, detect_diffusers
from library.models.checkpoint_io import read_state_dict
from library.models.modules import assign_weights, build_component
from library.models.tokenizer import family_tokenizers, load_tokenizer

_WEIGHT_NAMES = {
    "unet": ("diffusion_pytorch_model", ),
    "vae": ("diffusion_pytorch_model", ),
    "text_encoder": ("model", "pytorch_model"),
    "text_encoder_2": ("model", "pytorch_model"),
}
_VARIANTS = ("", ".fp16", ".bf16")
_SUFFIXES = (".safetensors", ".bin")


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "model_index.json").is_file() or (path / "unet").is_dir())


def is_diffusers_vae_folder(path: Path) -> bool:
    """A folder holding just a VAE (config.json + weights), or a pipeline folder with `vae/`."""
    return path.is_dir() and ((path / "config.json").is_file() or (path / "vae" / "config.json").is_file())


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"missing {path}", ["a diffusers folder needs a config.json in each component folder"]) from exc
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc})", ["restore the file from the model's source"]) from exc


def find_weights(component_dir: Path, component: str) -> Path:
    """The weight file of one component folder, preferring safetensors and full precision."""
    for variant in _VARIANTS:
        for suffix in _SUFFIXES:
            for stem in _WEIGHT_NAMES[component]:
                candidate = component_dir / f"{stem}{variant}{suffix}"
                if candidate.is_file():
                    return candidate
    raise ModelLoadError(f"no weights found in {component_dir}", [
        f"expected {_WEIGHT_NAMES[component][0]}.safetensors (or .bin / .fp16 variants) there",
        "sharded weights (*.index.json) are not supported; save the model unsharded",
    ])


def normalise_text_encoder_keys(state_dict: dict[str, torch.Tensor], keep_prefix: bool = False
                                ) -> dict[str, torch.Tensor]:
    """transformers < 5 saved `text_model.`-prefixed keys and a `position_ids` buffer; CLIPTextModel's
    keys now have neither. CLIPTextModelWithProjection (`keep_prefix`) keeps `text_model.`."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("embeddings.position_ids"):
            continue
        out[key if keep_prefix else key.removeprefix("text_model.")] = value
    return out


def load_component(component_dir: Path, component: str, config: dict[str, Any]) -> torch.nn.Module:
    """Build one module from its config and assign the folder's weights into it."""
    weights_path = find_weights(component_dir, component)
    state_dict = read_state_dict(weights_path)
    if component.startswith("text_encoder"):
        state_dict = normalise_text_encoder_keys(state_dict, keep_prefix=component == "text_encoder_2")
    module = build_component(component, config, empty=True)
    try:
        assign_weights(module, state_dict)
    except RuntimeError as exc:
        raise ModelLoadError(f"{weights_path} does not match {component_dir / 'config.json'}", [
            str(exc).splitlines()[0], "the weights and config come from different models; restore them",
        ]) from exc
    return module


def _optional_json(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.is_file() else None


def load_folder_modules(folder: Path) -> tuple[dict[str, torch.nn.Module], dict[str, Any], CLIPTokenizer,
                                               CLIPTokenizer | None, Detection]:
    """(modules by component, scheduler config, tokenizer, tokenizer_2, detection) from a diffusers folder.

    The family comes from the configs (architecture.detect_diffusers); SDXL folders add
    `text_encoder_2/` (CLIPTextModelWithProjection) and `tokenizer_2/`.
    """
    configs = {c: _optional_json(folder / c / "config.json") for c in ("unet", "vae", "text_encoder", "text_encoder_2")}
    detection = detect_diffusers(folder, _optional_json(folder / "model_index.json"), configs["unet"],
                                 configs["text_encoder"], configs["text_encoder_2"])
    if configs["vae"] is None:
        raise ModelLoadError(f"missing {folder / 'vae' / 'config.json'}",
                             ["a diffusers folder needs a config.json in each component folder"])
    sched_path = folder / "scheduler" / "scheduler_config.json"
    scheduler = read_json(sched_path) if sched_path.is_file() else {}
    wanted = ("unet", "vae", "text_encoder") + (("text_encoder_2",) if detection.architecture == "sdxl" else ())
    modules = {c: load_component(folder / c, c, configs[c]) for c in wanted}
    tokenizer, tokenizer_2 = family_tokenizers(detection.architecture)
    tokenizer = load_folder_tokenizer(folder, "tokenizer", tokenizer)
    if tokenizer_2 is not None:
        tokenizer_2 = load_folder_tokenizer(folder, "tokenizer_2", tokenizer_2)
    return modules, scheduler, tokenizer, tokenizer_2, detection


def load_folder_tokenizer(folder: Path, name: str = "tokenizer", fallback: CLIPTokenizer | None = None) -> CLIPTokenizer:
    """The folder's own tokenizer files if it has them (they may add tokens), else ours (`fallback`)."""
    tok_dir = folder / name
    has_files = (tok_dir / "tokenizer.json").is_file() or (
        (tok_dir / "vocab.json").is_file() and (tok_dir / "merges.txt").is_file())
    if has_files:
        return CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    return fallback if fallback is not None else load_tokenizer()


def load_vae_folder(path: Path) -> tuple[torch.nn.Module, Path]:
    """A VAE from a VAE-only folder or a pipeline folder's `vae/`; returns (module, weights file)."""
    vae_dir = path if (path / "config.json").is_file() else path / "vae"
    module = load_component(vae_dir, "vae", read_json(vae_dir / "config.json"))
    return module, find_weights(vae_dir, "vae")
