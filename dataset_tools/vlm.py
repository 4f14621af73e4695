"""Caption images with any vision-language model transformers loads without remote code.

``AutoProcessor`` + ``AutoModelForImageTextToText`` from a local folder saved
with ``save_pretrained`` (BLIP, BLIP-2, GIT, Florence-2, PaliGemma, LLaVA,
SmolVLM, Qwen2-VL …); ``trust_remote_code`` stays off, so a folder that needs
the model author's Python is refused with a clear message instead of running it.
Three prompt styles cover how these models are asked for a caption:

* ``caption``: the prompt (if any) is the start of the caption the model
  continues, as BLIP/GIT conditional captioning does ("a photo of" → "a photo of
  a woman …"); the output keeps it.
* ``task``: the prompt is a task token the processor understands (Florence-2's
  ``<MORE_DETAILED_CAPTION>``); only the generated text is kept.
* ``chat``: the prompt is a user message put through the processor's chat
  template with the image; only the answer is kept.
"""
from __future__ import annotations

import os

from dataset_tools.blip import (
    Captioner,
    load_pretrained_captioner,
    model_caption_folder,
)
from dataset_tools.captions import DEFAULT_CAPTION_EXTENSION
from dataset_tools.images import ToolRun
from library.errors import DatasetError, ModelLoadError

PROMPT_STYLES = ("caption", "task", "chat")
DEFAULT_PROMPTS = {"caption": "", "task": "<MORE_DETAILED_CAPTION>",
                   "chat": "Describe this image in one sentence for a training caption."}


def check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise DatasetError(f"unknown prompt style {style!r}", [f"use one of {', '.join(PROMPT_STYLES)}"])


def load_vlm(model_dir: str | os.PathLike[str], device: str = "cpu"):
    """(processor, model) from a local folder, no remote code; ModelLoadError names the folder."""
    return load_pretrained_captioner(model_dir, device, "vision-language")


def _inputs(processor, pictures: list, prompt: str, style: str):
    """Processor inputs for one batch in the given prompt style."""
    if style == "chat":
        if not getattr(processor, "chat_template", None):
            raise ModelLoadError("this model's processor has no chat template",
                                 ["use --prompt_style caption or task for this model"])
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only batches generate after the padding
        return processor(images=pictures, text=[text] * len(pictures), return_tensors="pt", padding=True)
    if prompt:
        return processor(images=pictures, text=[prompt] * len(pictures), return_tensors="pt")
    return processor(images=pictures, return_tensors="pt")


def vlm_captioner(processor, model, prompt: str = "", style: str = "caption", max_new_tokens: int = 60,
                  num_beams: int = 3, min_new_tokens: int = 1) -> Captioner:
    """A captioner: batch of PIL images -> one caption each."""
    import torch

    check_style(style)

    def caption(pictures: list) -> list[str]:
        inputs = _inputs(processor, pictures, prompt, style).to(model.device)
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                 num_beams=num_beams, do_sample=False)
        prompt_ids = inputs.get("input_ids")
        if style != "caption" and prompt_ids is not None and ids.shape[1] > prompt_ids.shape[1] \
                and torch.equal(ids[:, :prompt_ids.shape[1]], prompt_ids):
            ids = ids[:, prompt_ids.shape[1]:]  # decoder-only models echo the prompt
        return [" ".join(t.split()) for t in processor.batch_decode(ids, skip_special_tokens=True)]

    return caption


def vlm_caption_folder(src: str | os.PathLike[str], dst: str | os.PathLike[str], model_dir: str | os.PathLike[str],
                       prompt: str | None = None, style: str = "caption", prefix: str = "", batch_size: int = 4,
                       max_new_tokens: int = 60, num_beams: int = 3, min_new_tokens: int = 1,
                       caption_extension: str = DEFAULT_CAPTION_EXTENSION, in_place: bool = False,
                       overwrite: bool = False, captions_only: bool = False, device: str = "cpu",
                       progress: bool = True) -> ToolRun:
    """Write a model caption for every image without one (or every image with `overwrite`)."""
    check_style(style)
    text = DEFAULT_PROMPTS[style] if prompt is None else prompt

    def load() -> Captioner:
        processor, model = load_vlm(model_dir, device)
        return vlm_captioner(processor, model, text, style, max_new_tokens, num_beams, min_new_tokens)

    return model_caption_folder(src, dst, load, prefix=prefix, batch_size=batch_size,
                                caption_extension=caption_extension, in_place=in_place, overwrite=overwrite,
                                captions_only=captions_only, desc="vlm", progress=progress)
