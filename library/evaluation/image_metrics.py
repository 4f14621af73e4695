"""CLIP-I, CLIP-T and DINO between generated samples and the training images (DreamBooth's metrics).

Ruiz et al. 2023 (DreamBooth), section 4.1: CLIP-I = average pairwise cosine similarity
between CLIP image embeddings of generated and real images; DINO = the same with the
self-supervised ViT's embeddings (its [CLS] token), which separates identities that
CLIP lumps together; CLIP-T = average cosine similarity between the prompt's CLIP text
embedding and the generated images' embeddings. Models are local transformers folders
given by the user (a CLIP folder with its processor; a DINO/DINOv2/ViT folder with its
image processor); nothing is downloaded (local_files_only).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from library.errors import ModelLoadError


@dataclass
class ImageModels:
    clip: Any = None
    clip_processor: Any = None
    dino: Any = None
    dino_processor: Any = None

    @property
    def any(self) -> bool:
        return self.clip is not None or self.dino is not None


def _folder(path: str | os.PathLike[str], flag: str) -> str:
    if not os.path.isdir(path):
        raise ModelLoadError(f"{flag} {path}: not a folder", [f"{flag} takes a local transformers model folder "
                                                               "(config.json, weights, processor files); nothing is downloaded"])
    return str(path)


def load_image_models(clip_dir: str | None = None, dino_dir: str | None = None) -> ImageModels:
    """The models from local folders; a folder that transformers cannot read is one ModelLoadError."""
    from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor

    models = ImageModels()
    try:
        if clip_dir:
            folder = _folder(clip_dir, "--eval_clip_model")
            models.clip = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
            models.clip_processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        if dino_dir:
            folder = _folder(dino_dir, "--eval_dino_model")
            models.dino = AutoModel.from_pretrained(folder, local_files_only=True).eval()
            models.dino_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load an evaluation model: {str(exc).splitlines()[0]}",
                             ["give a transformers CLIP folder to --eval_clip_model and a DINO/ViT folder "
                              "to --eval_dino_model, each with its processor files"]) from None
    return models


def _as_tensor(x: Any) -> torch.Tensor:
    """transformers 5 may return a model output where 4.x returned the pooled tensor."""
    if isinstance(x, torch.Tensor):
        return x
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(x, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected output {type(x).__name__}")


@torch.no_grad()
def clip_image_embeddings(models: ImageModels, images: Sequence[Image.Image]) -> torch.Tensor:
    inputs = models.clip_processor(images=list(images), return_tensors="pt")
    return F.normalize(_as_tensor(models.clip.get_image_features(pixel_values=inputs["pixel_values"])).float(), dim=-1)


@torch.no_grad()
def clip_text_embeddings(models: ImageModels, texts: Sequence[str]) -> torch.Tensor:
    inputs = models.clip_processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
    feats = models.clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
    return F.normalize(_as_tensor(feats).float(), dim=-1)


@torch.no_grad()
def dino_embeddings(models: ImageModels, images: Sequence[Image.Image]) -> torch.Tensor:
    inputs = models.dino_processor(images=list(images), return_tensors="pt")
    out = models.dino(pixel_values=inputs["pixel_values"])
    return F.normalize(out.last_hidden_state[:, 0].float(), dim=-1)  # the [CLS] token


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over all (i, j) of cos(a_i, b_j) for unit rows."""
    return float((a @ b.T).mean())


@dataclass
class Reference:
    """The real images' embeddings, computed once per evaluation."""

    clip: torch.Tensor | None
    dino: torch.Tensor | None


def reference(models: ImageModels, images: Sequence[Image.Image]) -> Reference:
    return Reference(clip_image_embeddings(models, images) if models.clip is not None else None,
                     dino_embeddings(models, images) if models.dino is not None else None)


def image_scores(models: ImageModels, ref: Reference, generated: Sequence[Image.Image], prompt: str) -> dict[str, float]:
    """{"clip_i", "clip_t", "dino"} for these samples (only the metrics whose model was given)."""
    out: dict[str, float] = {}
    if models.clip is not None:
        emb = clip_image_embeddings(models, generated)
        out["clip_i"] = mean_pairwise_cosine(emb, ref.clip)
        out["clip_t"] = mean_pairwise_cosine(emb, clip_text_embeddings(models, [prompt]))
    if models.dino is not None:
        out["dino"] = mean_pairwise_cosine(dino_embeddings(models, generated), ref.dino)
    return out


def generate(bundle, prompt: str, seeds: Sequence[int], lora: tuple[str, float], *, size: int,
             steps: int = 20, cfg: float = 7.0) -> list[Image.Image]:
    """Samples of `prompt` with one LoRA at one weight (Euler a), one per seed, with the bundled sampler."""
    from library.sampling.pipeline import ImageJob, SampleRequest, SamplingSession

    request = SampleRequest(prompt=prompt, steps=steps, cfg_scale=cfg, sampler="Euler a", width=size, height=size,
                            loras=(lora,))
    jobs = [ImageJob(seed=int(s), prompt=prompt, negative_prompt="", text=prompt, negative_text="", loras=(lora,))
            for s in seeds]
    session = SamplingSession(bundle)
    try:
        return [g.image.convert("RGB") for g in session.run_jobs(request, jobs, max_batch=8)]
    finally:
        session.loras.clear()


def add_image_scores(bundle, scores: list, models: ImageModels, reference_paths: Sequence[str], prompt: str, *,
                     samples: int = 4, size: int = 512, steps: int = 20, seed: int = 0) -> None:
    """Fill clip_i / clip_t / dino of every score from `samples` images of `prompt` (same seeds for all)."""
    if not reference_paths:
        raise ModelLoadError("image metrics need the concept images as references", ["give --train_data_dir"])
    refs = []
    for p in reference_paths:
        with Image.open(p) as im:
            refs.append(im.convert("RGB"))
    ref = reference(models, refs)
    seeds = [seed + i for i in range(samples)]
    for s in scores:
        values = image_scores(models, ref, generate(bundle, prompt, seeds, (s.file, s.weight), size=size, steps=steps),
                              prompt)
        for key, value in values.items():
            setattr(s, key, value)
