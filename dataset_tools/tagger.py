"""Tag images with a WD14-style ONNX tagger from a local folder (onnxruntime, offline).

The SmilingWolf tagger family ships a folder holding ``model.onnx`` and
``selected_tags.csv`` (columns ``tag_id,name,category,count``; category 9 is a
rating, 4 a character, 0 a general tag). The model takes NHWC float32 images in
BGR order with values 0-255, padded to a white square and resized to the
model's input size (448), and returns one sigmoid probability per CSV row.
These are the facts sd-scripts' ``finetune/tag_images_by_wd14_tagger.py`` and
kohya_ss rely on; the options keep their names (``--thresh``,
``--character_threshold``, ``--undesired_tags``, ``--tag_replacement`` …).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_tools.blip import Captioner, model_caption_folder
from dataset_tools.captions import DEFAULT_CAPTION_EXTENSION, dedupe_tags
from dataset_tools.images import ToolRun
from library.errors import DatasetError, ModelLoadError

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING, GENERAL, CHARACTER = 9, 0, 4
DEFAULT_SIZE = 448


@dataclass
class TagOptions:
    """How probabilities become a caption; defaults follow sd-scripts' tagger."""

    general_threshold: float = 0.35
    character_threshold: float = 0.35
    undesired: list[str] = field(default_factory=list)
    replacements: dict[str, str] = field(default_factory=dict)
    remove_underscore: bool = False
    character_tags_first: bool = False
    always_first: list[str] = field(default_factory=list)
    use_rating_tags: bool = False
    separator: str = ", "


@dataclass
class TagTable:
    names: list[str]
    categories: list[int]


def read_tag_table(path: str | os.PathLike[str]) -> TagTable:
    """selected_tags.csv -> names and categories, in the model's output order."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}", ["the tagger folder needs selected_tags.csv"]) from exc
    if not rows or [c.strip() for c in rows[0][:3]] != ["tag_id", "name", "category"]:
        raise ModelLoadError(f"{path} is not a WD14 tag list: header {rows[0] if rows else 'missing'}",
                             ["expected the columns tag_id,name,category,count"])
    try:
        return TagTable([r[1] for r in rows[1:]], [int(r[2]) for r in rows[1:]])
    except (IndexError, ValueError) as exc:
        raise ModelLoadError(f"{path}: bad row ({exc})", ["every row needs tag_id,name,category,count"]) from exc


def parse_tag_replacement(text: str) -> dict[str, str]:
    """sd-scripts' `source1,target1;source2,target2`; `\\,` and `\\;` escape the separators."""
    if not text:
        return {}
    out = {}
    escaped = text.replace("\\,", "\0c").replace("\\;", "\0s")
    for pair in escaped.split(";"):
        parts = [p.replace("\0c", ",").replace("\0s", ";").strip() for p in pair.split(",")]
        if len(parts) != 2 or not parts[0]:
            raise DatasetError(f"bad tag replacement {pair!r} in {text!r}",
                               ["write it as source,target;source2,target2 (escape commas in tags as \\,)"])
        out[parts[0]] = parts[1]
    return out


def display_name(tag: str, remove_underscore: bool) -> str:
    """sd-scripts keeps short tags (kaomoji such as ^_^) as they are when removing underscores."""
    return tag.replace("_", " ") if remove_underscore and len(tag) > 3 else tag


def select_tags(probs: np.ndarray, table: TagTable, options: TagOptions) -> list[str]:
    """One image's probabilities -> ordered tags (thresholds, replacements, removals, ordering)."""
    undesired = {t.strip() for t in options.undesired}
    general, characters, ratings = [], [], []
    for prob, name, category in zip(probs.tolist(), table.names, table.categories):
        tag = display_name(name, options.remove_underscore)
        tag = options.replacements.get(tag, tag)
        if tag in undesired:
            continue
        if category == CHARACTER and prob >= options.character_threshold:
            characters.append(tag)
        elif category == GENERAL and prob >= options.general_threshold:
            general.append(tag)
        elif category == RATING:
            ratings.append((prob, tag))
    tags = characters + general if options.character_tags_first else general + characters
    if options.use_rating_tags and ratings:
        tags.insert(0, max(ratings)[1])
    for first in reversed(options.always_first):
        if first in tags:
            tags.remove(first)
            tags.insert(0, first)
    return dedupe_tags(tags)


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """RGB PIL image -> HxWx3 float32 BGR 0-255, padded to a white square and resized to `size`."""
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image.convert("RGB"), ((side - image.width) // 2, (side - image.height) // 2))
    resample = Image.Resampling.BOX if side > size else Image.Resampling.LANCZOS
    pixels = np.asarray(square.resize((size, size), resample), dtype=np.float32)
    return np.ascontiguousarray(pixels[:, :, ::-1])


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadError("the WD14 tagger needs onnxruntime, which is not installed",
                             ["pip install 'lorasmith[caption]' (or pip install onnxruntime)"]) from exc
    return onnxruntime


def load_tagger(model_dir: str | os.PathLike[str], options: TagOptions) -> Captioner:
    """A captioner running `model_dir`/model.onnx on batches of PIL images."""
    model_dir = Path(model_dir)
    if not (model_dir / MODEL_FILE).is_file() or not (model_dir / TAGS_FILE).is_file():
        raise ModelLoadError(f"no WD14 tagger in {model_dir}",
                             [f"point --model at a folder holding {MODEL_FILE} and {TAGS_FILE}"])
    table = read_tag_table(model_dir / TAGS_FILE)
    ort = _import_onnxruntime()
    try:
        session = ort.InferenceSession(str(model_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unexported error types
        raise ModelLoadError(f"cannot load {model_dir / MODEL_FILE}: {exc}", ["re-copy the model file"]) from exc
    inp = session.get_inputs()[0]
    size = inp.shape[1] if isinstance(inp.shape[1], int) else DEFAULT_SIZE
    output = session.get_outputs()[0].name

    def tag(pictures: list) -> list[str]:
        batch = np.stack([preprocess(p, size) for p in pictures])
        try:
            probs = session.run([output], {inp.name: batch})[0]
        except Exception as exc:  # onnxruntime's own error types: shape or type mismatch
            raise ModelLoadError(f"{model_dir / MODEL_FILE} refused a batch of shape {batch.shape}: {exc}",
                                 ["a model exported with a fixed batch size needs --batch_size 1",
                                  "the input must be NHWC float32 (the WD14 tagger layout)"]) from exc
        if probs.shape[-1] != len(table.names):
            raise ModelLoadError(f"{model_dir}: the model gives {probs.shape[-1]} scores but {TAGS_FILE} "
                                 f"lists {len(table.names)} tags", ["use the CSV shipped with this model"])
        return [options.separator.join(select_tags(row, table, options)) for row in probs]

    return tag


def tag_folder(src: str | os.PathLike[str], dst: str | os.PathLike[str], model_dir: str | os.PathLike[str],
               options: TagOptions | None = None, prefix: str = "", batch_size: int = 4,
               caption_extension: str = DEFAULT_CAPTION_EXTENSION, in_place: bool = False,
               overwrite: bool = False, captions_only: bool = False, append: bool = False,
               progress: bool = True) -> ToolRun:
    """Write WD14 tags for every image without a caption (every image with `overwrite`).

    `append` keeps each image's own caption and adds the tags it lacks after it.
    """
    options = options or TagOptions()
    return model_caption_folder(src, dst, lambda: load_tagger(model_dir, options), prefix=prefix,
                                batch_size=batch_size, caption_extension=caption_extension, in_place=in_place,
                                overwrite=overwrite, captions_only=captions_only, desc="tag", progress=progress,
                                append=append)
