"""A1111 "infotext": the `parameters` PNG text chunk that PNG Info reads, and atomic PNG writes.

Layout (A1111 `create_infotext`):
    <prompt>
    Negative prompt: <negative>            (line left out when empty)
    Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512,
    Model hash: 0123456789, Model: name, Clip skip: 2, RNG: CPU, Lora hashes: "a: 0123456789ab, b: ...",
    Version: lorasmith 0.1.0
A value containing a comma, colon or quote is written JSON-quoted, as A1111 does. `Model` is the
checkpoint's file name without its extension and `RNG: CPU` says the noise was drawn on the CPU
(A1111's "Random number generator source" setting, which it leaves out when it is GPU).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from library.fileio import atomic_path


@lru_cache(maxsize=1)
def version_string() -> str:
    try:
        return f"lorasmith {metadata.version('lorasmith')}"
    except metadata.PackageNotFoundError:
        return "lorasmith"


def format_number(value: float) -> str:
    """7.0 → "7", 7.5 → "7.5" (A1111 writes CFG and weights without trailing zeros)."""
    return f"{float(value):.6g}"


def quote(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in ",:\"\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


# Checkpoint extensions A1111 lists; it names a model by its file name without one (name_for_extra).
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def model_label(name: str) -> str:
    """"v1-5-pruned.safetensors" -> "v1-5-pruned"; folder and built-in names stay as they are."""
    for ext in MODEL_EXTENSIONS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """The full `parameters` text; params are written in order, None values skipped."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None))
    return "\n".join(lines)


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, parameters) from a `parameters` text; inverse of format_infotext."""
    *head, last = text.split("\n")
    params: dict[str, str] = {}
    for m in re.finditer(r'\s*([\w /.+-]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)', last):
        key, value = m.group(1).strip(), m.group(2).strip()
        params[key] = json.loads(value) if value.startswith('"') else value
    prompt_lines, negative = [], ""
    for i, line in enumerate(head):
        if line.startswith("Negative prompt:"):
            negative = "\n".join([line[len("Negative prompt:"):].strip()] + head[i + 1:])
            break
        prompt_lines.append(line)
    return "\n".join(prompt_lines), negative, params


# A1111's `parameters` line grammar (modules/infotext_utils.py re_param): a key starts with a word
# character and holds words, spaces, '-' and '/'; a value is a JSON string when it starts with a
# quote (commas, colons and escaped quotes inside), else everything up to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def _unquote(value: str) -> str:
    """A1111's unquote: a "..." value is JSON-decoded; anything it cannot decode stays as written."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


def parse_parameters(text: str) -> dict[str, str]:
    """An A1111 infotext (ours or A1111's) as A1111's PNG Info / "paste" reads it.

    Returns {"Prompt": ..., "Negative prompt": ..., "<key>": "<value>", ...} with every value a
    string, as A1111's parse_generation_parameters does:
    - the last line is the parameters line only when the grammar finds at least 3 `key: value`
      pairs in it; otherwise it belongs to the prompt (an infotext without settings);
    - lines before `Negative prompt:` are the prompt, that line and the rest the negative prompt;
    - quoted values are JSON-decoded; a `WxH` value (Size, Hires resize, First pass size) also
      gives "<key>-1" (width) and "<key>-2" (height), and its original "<key>" is kept too;
    - a missing `Clip skip` reads as "1" (A1111 leaves it out at its default).
    """
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            target = negative
            line = line[len("Negative prompt:"):].strip()
        target.append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(last):
        value = _unquote(value.strip()) if value.strip().startswith('"') else value.strip()
        result[key.strip()] = value
        size = _SIZE.match(value)
        if size:
            result[f"{key.strip()}-1"], result[f"{key.strip()}-2"] = size.group(1), size.group(2)
    result.setdefault("Clip skip", "1")
    return result


def read_png_parameters(path: str | os.PathLike[str]) -> str:
    """The `parameters` text of a PNG (A1111 and lorasmith write it there); a clear error when absent."""
    from library.errors import SamplingError

    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise SamplingError(f"{path}: no such file", ["give the PNG whose settings should be restored"])
    try:
        with Image.open(path) as image:
            text = image.info.get("parameters")
            if text is None and isinstance(getattr(image, "text", None), dict):
                text = image.text.get("parameters")
    except (OSError, ValueError) as exc:
        raise SamplingError(f"{path}: cannot be read as an image ({exc})",
                            ["give a PNG written by lorasmith or AUTOMATIC1111"]) from None
    if not text or not str(text).strip():
        raise SamplingError(f"{path}: the image has no generation parameters (no A1111 'parameters' text chunk)",
                            [("only PNGs saved by lorasmith or AUTOMATIC1111 (with 'Save text information about "
                              "generation parameters as chunks to png files' on) carry them; "
                              "images that were re-saved or converted lose them")])
    return str(text)


def save_png(image: Image.Image, path: str | os.PathLike[str], parameters: str,
             extra_text: Mapping[str, str] | None = None) -> Path:
    """Write a PNG with its `parameters` chunk atomically (temp file beside it, then rename)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)
    for key, value in (extra_text or {}).items():
        info.add_text(key, value)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def next_image_path(folder: str | os.PathLike[str], seed: int, suffix: str = "") -> Path:
    """A1111-style `00012-1234.png`: the next free index in `folder`, never an existing file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    indices = [int(m.group(1)) for p in folder.glob("*.png") if (m := re.match(r"(\d{5})-", p.name))]
    index = max(indices, default=-1) + 1
    while True:
        path = folder / f"{index:05d}-{seed}{suffix}.png"
        if not path.exists():
            return path
        index += 1
