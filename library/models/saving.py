"""Writing a bundle back out: one LDM-layout `.safetensors`, or a diffusers folder.

Both are atomic: a single file goes through `atomic_path`; a folder is written
under a temp name beside the destination and renamed into place only when
complete, so a crash never leaves a half-written model that looks loadable.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from library.errors import ModelLoadError
from library.fileio import apply_user_mode, atomic_path, atomic_write_text
from library.models.architecture import V_PRED_KEY, ZTSNR_KEY
from library.models.bundle import ModelBundle
from library.models.ldm_convert import modules_to_ldm

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

_FORMAT_METADATA = {"format": "pt"}
_TE_KEY_PREFIX = "text_model."  # as transformers < 5 and every hub SD1.x folder name them


def _cast(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}


def ldm_state_dict(bundle: ModelBundle, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The bundle's weights in the LDM single-file layout of its family, cast to `dtype`.

    Tensors the source file had beyond the modules (`bundle.ldm_extras`) are written back; a
    v-prediction model gets ComfyUI's `v_pred` marker so other tools read it as v too.
    """
    extras = dict(bundle.ldm_extras)
    if bundle.facts.prediction_type == "v_prediction":
        extras.setdefault(V_PRED_KEY, torch.zeros(0))
    else:
        extras.pop(V_PRED_KEY, None)
    state = modules_to_ldm(bundle.components(), bundle.facts.architecture, extras)
    state.update({k: v for k, v in extras.items() if k in (V_PRED_KEY, ZTSNR_KEY)})
    return _cast(state, dtype)


def save_single_file(bundle: ModelBundle, path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> Path:
    """Write an A1111/sd-scripts-compatible `.safetensors` checkpoint."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"cannot write {path}: single-file checkpoints are written as .safetensors only",
                             ["give an output name ending in .safetensors"])
    if path.is_dir():
        raise ModelLoadError(f"cannot write {path}: it is a folder", ["remove it or choose another output name"])
    with atomic_path(path) as tmp:
        save_file(ldm_state_dict(bundle, dtype), str(tmp), metadata=dict(_FORMAT_METADATA))
    return path


def save_diffusers(bundle: ModelBundle, folder: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> Path:
    """Write a diffusers pipeline folder; the folder appears only once complete."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        _write_folder(bundle, tmp, dtype)
        apply_user_mode(tmp)  # mkdtemp made it 0700 and safetensors its files 0600
        _replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _replace_folder(new: Path, dest: Path) -> None:
    """Move `new` to `dest`; an existing `dest` is moved aside first and deleted only afterwards."""
    if not dest.exists():
        os.replace(new, dest)
        return
    if not dest.is_dir():
        raise ModelLoadError(f"cannot write a diffusers folder to {dest}: a file of that name exists",
                             ["remove it or choose another output path"])
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
    os.replace(dest, old / dest.name)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def _write_folder(bundle: ModelBundle, root: Path, dtype: torch.dtype) -> None:
    for name in ("unet", "vae"):
        module = getattr(bundle, name)
        (root / name).mkdir()
        module.save_config(str(root / name))
        save_file(_cast(module.state_dict(), dtype), str(root / name / "diffusion_pytorch_model.safetensors"),
                  metadata=dict(_FORMAT_METADATA))
    for name in ("text_encoder", "text_encoder_2"):
        module = getattr(bundle, name)
        if module is None:
            continue
        te_dir = root / name
        te_dir.mkdir()
        module.config.save_pretrained(str(te_dir))
        # CLIPTextModel's keys lack `text_model.` under transformers 5; every hub folder has it
        te_state = {(k if k.startswith(("text_model.", "text_projection.")) else _TE_KEY_PREFIX + k): v
                    for k, v in module.state_dict().items()}
        save_file(_cast(te_state, dtype), str(te_dir / "model.safetensors"), metadata=dict(_FORMAT_METADATA))
    _write_tokenizer(bundle.tokenizer, root / "tokenizer")
    if bundle.tokenizer_2 is not None:
        _write_tokenizer(bundle.tokenizer_2, root / "tokenizer_2")
    scheduler_class = bundle.scheduler_config.get("_class_name", "PNDMScheduler")
    sched = {"_class_name": scheduler_class, **{k: v for k, v in bundle.scheduler_config.items() if k != "_class_name"}}
    atomic_write_text(root / "scheduler" / "scheduler_config.json", json.dumps(sched, indent=2) + "\n")
    index = _model_index(scheduler_class, sdxl=bundle.text_encoder_2 is not None)
    atomic_write_text(root / "model_index.json", json.dumps(index, indent=2) + "\n")


def _write_tokenizer(tok: CLIPTokenizer, tok_dir: Path) -> None:
    """tokenizer.json (transformers 5) plus vocab.json/merges.txt, the files every tool reads."""
    tok.save_pretrained(str(tok_dir))
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    atomic_write_text(tok_dir / "vocab.json", json.dumps(tok.get_vocab(), ensure_ascii=False))
    atomic_write_text(tok_dir / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")


def _model_index(scheduler_class: str, sdxl: bool) -> dict[str, object]:
    """diffusers' model_index.json: StableDiffusionPipeline (SD1.x/2.x) or StableDiffusionXLPipeline."""
    import diffusers

    index: dict[str, object] = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
    }
    if sdxl:
        index["force_zeros_for_empty_prompt"] = True
    else:
        index.update({"feature_extractor": [None, None], "requires_safety_checker": False,
                      "safety_checker": [None, None]})
    index.update({
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    if sdxl:
        index.update({"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                      "tokenizer_2": ["transformers", "CLIPTokenizer"]})
    return dict(sorted(index.items()))
