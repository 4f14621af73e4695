"""Caption images with a BLIP model from a local folder (transformers, offline).

The user points at a folder saved with ``save_pretrained`` (for example a copy
of Salesforce/blip-image-captioning-large they downloaded once); nothing is
fetched. Generated captions can get the trigger prefix (``ohwx woman, ...``)
in the same pass. Images that already have a caption keep it unless asked.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from dataset_tools.captions import (
    DEFAULT_CAPTION_EXTENSION,
    CaptionEdit,
    caption_path,
    copy_image,
    dedupe_tags,
    join_tags,
    prepare_caption_output,
    read_caption,
    split_tags,
)
from dataset_tools.images import ToolRun, load_image, scan_folder, start_run
from library.errors import DatasetError, ModelLoadError
from library.fileio import atomic_write_text

# A captioner turns a batch of PIL images into one caption each.
Captioner = Callable[[list], list[str]]


def load_pretrained_captioner(model_dir: str | os.PathLike[str], device: str = "cpu", kind: str = "BLIP"):
    """(processor, model) from a local folder through the Auto classes, no remote code.

    Raises ModelLoadError naming the folder; `kind` names the model in the message.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"no {kind} model in {model_dir}",
                             ["point --model at a folder saved with save_pretrained (it holds config.json)"])
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True,
                                                            trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load a {kind} captioner from {model_dir}: {exc}",
                             ["the folder needs the model and its processor/tokenizer files",
                              "models that need trust_remote_code are not run: use a transformers-native copy"]
                             ) from exc
    return processor, model.to(device).eval()


def load_blip(model_dir: str | os.PathLike[str], device: str = "cpu"):
    """(processor, model) of a BLIP folder (any transformers-native captioner loads the same way)."""
    return load_pretrained_captioner(model_dir, device, "BLIP")


def generate_captions(processor, model, images: list, max_new_tokens: int = 40, num_beams: int = 3,
                      min_new_tokens: int = 5) -> list[str]:
    """One caption per PIL image, greedy or beam search."""
    import torch

    inputs = processor(images=images, return_tensors="pt").to(model.device)
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                             num_beams=num_beams, do_sample=False)
    return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]


def _pending(images: list[Path], src: Path, dst: Path, caption_extension: str, overwrite: bool,
             captions_only: bool, run: ToolRun) -> list[Path]:
    """Images still needing a caption; the others are recorded as already done.

    An image whose own caption sits in SRC keeps it: copied (with the image) to a
    new OUTPUT, so OUTPUT is a complete dataset, unless `overwrite`.
    """
    todo = []
    for image in images:
        dest = caption_path(image, dst, caption_extension)
        own = read_caption(caption_path(image, src, caption_extension))
        if overwrite or not (dest.exists() or own is not None):
            todo.append(image)
            continue
        if not dest.exists():
            atomic_write_text(dest, own + "\n")
            if not captions_only:
                copy_image(image, dst, overwrite)
        run.skipped_existing.append(dest)
    return todo


def append_new_tags(own: str, generated: str) -> str:
    """`own` caption's tags, then the generated tags it lacks (case-insensitive)."""
    return join_tags(dedupe_tags(split_tags(own) + split_tags(generated)))


def model_caption_folder(src: str | os.PathLike[str], dst: str | os.PathLike[str], load: Callable[[], Captioner],
                         prefix: str = "", batch_size: int = 4, caption_extension: str = DEFAULT_CAPTION_EXTENSION,
                         in_place: bool = False, overwrite: bool = False, captions_only: bool = False,
                         desc: str = "caption", progress: bool = True, append: bool = False) -> ToolRun:
    """Caption every image without one (every image with `overwrite`) using `load()`'s captioner.

    Shared by BLIP, the other vision-language captioners and the WD14 tagger: the
    model is loaded only when some image needs a caption, so a re-run that has
    nothing to do never pays for (or needs) the model. `append` (sd-scripts'
    ``--append_tags``) adds the new tags an image's own caption lacks, after them.
    """
    if batch_size < 1:
        raise DatasetError(f"batch size must be at least 1, got {batch_size}")
    src, dst = Path(src), Path(dst)
    prepare_caption_output(src, dst, in_place)
    scan = scan_folder(src)
    run = start_run(scan, list_non_images=False)
    run.non_images = [p for p in scan.non_images if p.suffix != caption_extension]
    todo = _pending(scan.images, src, dst, caption_extension, overwrite or append, captions_only, run)
    if not todo:
        return run
    captioner = load()
    edit = CaptionEdit(prefix=prefix)
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch, pictures = [], []
        for image in todo[start:start + batch_size]:
            try:
                pictures.append(load_image(image))
                batch.append(image)
            except DatasetError as exc:
                run.unreadable.append(exc.summary)
        texts = captioner(pictures) if batch else []
        for image, text in zip(batch, texts):
            own = read_caption(caption_path(image, src, caption_extension)) if append else None
            dest = caption_path(image, dst, caption_extension)
            atomic_write_text(dest, edit.apply(append_new_tags(own, text) if own else text) + "\n")
            run.written.append(dest)
            if not in_place and not captions_only:
                copy_image(image, dst, overwrite)
        bar.update(len(todo[start:start + batch_size]))
    bar.close()
    return run


def blip_caption_folder(src: str | os.PathLike[str], dst: str | os.PathLike[str], model_dir: str | os.PathLike[str],
                        prefix: str = "", batch_size: int = 4, max_new_tokens: int = 40, num_beams: int = 3,
                        min_new_tokens: int = 5, caption_extension: str = DEFAULT_CAPTION_EXTENSION,
                        in_place: bool = False, overwrite: bool = False, captions_only: bool = False,
                        device: str = "cpu", progress: bool = True) -> ToolRun:
    """Write a BLIP caption for every image without one (or every image with `overwrite`)."""

    def load() -> Captioner:
        processor, model = load_blip(model_dir, device)
        return lambda pictures: generate_captions(processor, model, pictures, max_new_tokens, num_beams,
                                                  min_new_tokens)

    return model_caption_folder(src, dst, load, prefix=prefix, batch_size=batch_size,
                                caption_extension=caption_extension, in_place=in_place, overwrite=overwrite,
                                captions_only=captions_only, desc="blip", progress=progress)
