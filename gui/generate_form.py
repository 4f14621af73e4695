"""The Generate tab's form as data: fields from `lorasmith sample`'s parser, and back to its command.

The form is generated from the sample command's own argument parser
(`library.sampling.cli.add_sample_arguments`), so its fields, defaults and help
are the CLI's: one declaration, and a flag added to `lorasmith sample` appears
on the tab too.  `sample_command` turns the fields back into that command: every
path checked against the allowed folders, the arguments parsed by the same
parser and the request validated, so a bad value is named before anything is
queued.  A PNG's infotext is read by `library.sampling.from_png`, the reader
`lorasmith sample --from_png` uses.  Pure functions, tested without a browser.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gui.safety import builtin_model_names
from library.errors import ConfigError, LorasmithError

if TYPE_CHECKING:
    from gui.context import GuiContext

# Where each CLI field sits on the page; a flag not named here lands under "More options".
MAIN_ROWS: tuple[tuple[str, ...], ...] = (
    ("pretrained_model_name_or_path", "vae", "embeddings_dir"),
    ("prompt",), ("negative_prompt",),
    ("sampler", "steps", "cfg_scale", "seed"),
    ("width", "height", "batch_size", "batch_count", "clip_skip"),
)
HIRES_ROWS: tuple[tuple[str, ...], ...] = (
    ("enable_hr", "hr_upscaler", "hr_scale", "denoising_strength"),
    ("hr_second_pass_steps", "hr_resize_x", "hr_resize_y"),
)
# Set by the page itself: the LoRA picker's folder, and PNGs are loaded by dropping them.
PAGE_SET = ("help", "lora_dir", "from_png")
PATH_FIELDS = ("pretrained_model_name_or_path", "vae", "init_image", "from_png")  # besides every *_dir
LORA_SLOTS = 4
_LORA_TAG = re.compile(r"\s*<lora:([^:<>]+)(?::([+-]?[\d.]+))?>")


class FormError(ConfigError):
    """A bad form value, worded like the CLI's argparse message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit the GUI process
        raise FormError(f"sample settings: {message}", ["fix the field named above"])


@lru_cache(maxsize=1)
def sample_parser() -> argparse.ArgumentParser:
    """`lorasmith sample`'s parser: the single declaration of every field on this tab."""
    from library.sampling.cli import add_sample_arguments

    parser = _Parser(prog="lorasmith sample", add_help=False)
    add_sample_arguments(parser)
    return parser


def sample_actions() -> dict[str, argparse.Action]:
    """dest → argparse action for every field the form shows."""
    return {a.dest: a for a in sample_parser()._actions if a.dest not in PAGE_SET and a.option_strings}


def field_kind(action: argparse.Action) -> str:
    """checkbox, int, float or text: how the value is shown and written back."""
    if action.nargs == 0:
        return "checkbox"
    probe = action.default
    if action.type in (int, float):
        return action.type.__name__
    if isinstance(probe, bool) or probe is None or isinstance(probe, str):
        return "text"
    return "int" if isinstance(probe, int) else "float" if isinstance(probe, float) else "text"


def is_path_field(dest: str) -> bool:
    return dest.endswith("_dir") or dest in PATH_FIELDS


def more_fields() -> list[str]:
    placed = {d for rows in MAIN_ROWS + HIRES_ROWS for d in rows}
    return [d for d in sample_actions() if d not in placed]


# --- form → command ------------------------------------------------------------------------------
def lora_tags(loras: list[tuple[str | None, Any]]) -> str:
    """` <lora:NAME:W>` for each picked slot (A1111's spelling; weight written without trailing zeros)."""
    from library.sampling.infotext import format_number

    out = []
    for name, weight in loras:
        if name and str(name).strip():
            w = 1.0 if weight in (None, "") else float(weight)
            out.append(f" <lora:{str(name).strip()}:{format_number(w)}>")
    return "".join(out)


def _flag_value(dest: str, action: argparse.Action, value: Any, guard) -> str | None:
    kind = field_kind(action)
    if kind in ("int", "float"):
        if value is None or value == "":
            return None
        if kind == "int":
            if float(value) != int(float(value)):
                raise FormError(f"{dest}: {value} is not a whole number", [f"give a whole number for {dest}"])
            value = int(float(value))
        return str(value)
    text = "" if value is None else str(value)
    if dest not in ("prompt", "negative_prompt"):
        text = text.strip()
    if not text:
        return None
    if is_path_field(dest) and not (dest == "pretrained_model_name_or_path" and text in builtin_model_names()):
        text = str(guard.check(text, dest))
    elif dest == "hr_upscaler" and ("/" in text or "\\" in text):  # a model file by path (a bare name: --models_dir)
        text = str(guard.check(text, "hires upscaler model"))
    return text


def _is_default(action: argparse.Action, text: str) -> bool:
    """Whether a field still holds the CLI default (7 and 7.0 are the same CFG)."""
    if action.required or action.default is None:
        return False
    if field_kind(action) in ("int", "float"):
        return float(text) == float(action.default)
    return text == str(action.default)


def sample_command(values: dict[str, Any], loras: list[tuple[str | None, Any]], lora_dir: str | None, guard) -> list[str]:
    """`lorasmith sample` arguments for the form: fields at their CLI default are left out.

    `values` maps CLI dest names to widget values; LoRA slots become `<lora:NAME:W>` tags in the
    prompt with --lora_dir.  The result is parsed by the CLI's own parser and validated as a
    request here, so a bad value is named before anything is queued.
    """
    actions = sample_actions()
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise FormError("The form sent values for unknown sample fields", [f"unknown field {k!r}" for k in unknown])
    values = dict(values)
    tags = lora_tags(loras)
    values["prompt"] = (values.get("prompt") or "").strip() + tags
    if not values["prompt"].strip():
        raise FormError("Prompt is empty", ["describe the image to generate"])
    if not (values.get("output_dir") or "").strip():
        values["output_dir"] = "outputs/img2img" if (values.get("init_image") or "").strip() else "outputs/txt2img"
    argv = ["sample"]
    for dest, action in actions.items():
        if dest not in values:
            continue
        value = values[dest]
        if action.nargs == 0:  # store_true, or --flag/--no-flag
            if bool(value) != bool(action.default):
                argv.append(action.option_strings[0] if value else action.option_strings[-1])
            continue
        text = _flag_value(dest, action, value, guard)
        if text is None or (dest != "output_dir" and _is_default(action, text)):
            continue
        # "--flag=value" keeps a value that starts with '-' (a negative prompt "-blurry") from reading as a flag
        argv += [f"{action.option_strings[0]}={text}"] if text.startswith("-") and field_kind(action) == "text" \
            else [action.option_strings[0], text]
    if tags or any(f"<{kind}:" in values["prompt"] for kind in ("lora", "lyco")):
        if not (lora_dir or "").strip():
            raise FormError("LoRAs are used but the LoRA folder is empty", ["choose the folder that holds the LoRA files"])
        argv += ["--lora_dir", str(guard.check(lora_dir.strip(), "LoRA folder"))]
    check_command(argv)
    return argv


def check_command(argv: list[str]) -> None:
    """Parse with the CLI's parser and validate the request as `lorasmith sample` will (no model loaded)."""
    from library.sampling.cli import request_from_args
    from library.sampling.pipeline import validate_request

    args = sample_parser().parse_args(argv[1:])
    request = request_from_args(args)
    if request.batch_count == 0:  # "until stopped" (Stop ends it): checked as one batch, as the CLI does
        request = dataclasses.replace(request, batch_count=1)
    validate_request(request)


# --- LoRA folders -----------------------------------------------------------------------------------
def known_lora_folders(ctx: GuiContext, form_output_dir: str | None = None) -> list[str]:
    """Training output folders the GUI knows (the form's, then past runs', newest first), inside the allowed folders."""
    candidates = [form_output_dir] + [j.config.output_dir for j in reversed(ctx.jobs.jobs)]
    out: list[str] = []
    for folder in candidates:
        if not folder or not ctx.guard.allows(folder):
            continue
        path = str(ctx.guard.resolve(folder))
        if path not in out:
            out.append(path)
    return out


def lora_names(folder: str | None, guard) -> list[str]:
    """NAME of every NAME.safetensors under `folder` (subfolders as sub/NAME), as `<lora:NAME>` tags name them."""
    if not folder or not guard.allows(folder):
        return []
    root = guard.resolve(folder)
    if not root.is_dir():
        return []
    files = (p for p in root.rglob("*.safetensors") if p.is_file() and guard.allows(p))
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in files)


# --- PNG infotext → form ---------------------------------------------------------------------------
def split_lora_tags(prompt: str, slots: int = LORA_SLOTS) -> tuple[str, list[tuple[str, float]]]:
    """Move up to `slots` `<lora:NAME:W>` tags out of a prompt into picker slots; the rest stay in the text."""
    picked: list[tuple[str, float]] = []

    def take(m: re.Match) -> str:
        if len(picked) >= slots:
            return m.group(0)
        picked.append((m.group(1).strip(), float(m.group(2)) if m.group(2) else 1.0))
        return ""

    return _LORA_TAG.sub(take, prompt).strip(), picked


def fields_from_parameters(params: dict[str, str], lora_dir: str | None = None, guard=None,
                           embeddings_dir: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """(field values, notes) from `parse_parameters`' dict, read by `lorasmith sample --from_png`'s own reader.

    Fields the infotext does not carry keep their value, except hires fix, which is switched off
    unless the infotext has it.  Notes say what was not restored: another model or VAE, settings
    this sampler cannot redo, and (with `lora_dir`) LoRAs missing there or differing from the
    files the image was made with (its `Lora hashes`); the same for embeddings (`TI hashes`).
    """
    from library.sampling.from_png import (
        check_embedding_hashes,
        check_lora_hashes,
        settings_from_parameters,
    )

    settings = settings_from_parameters(params, "the PNG")
    actions = sample_actions()
    values = {"enable_hr": False, **settings.fields}
    notes = [f"not restored: {key}" for key in settings.not_restored]
    if settings.model and settings.model in builtin_model_names():
        values["pretrained_model_name_or_path"] = settings.model
    elif settings.model:
        notes.append(f"made with the model {settings.model!r}: check that the Model field names that file")
    if params.get("VAE"):
        notes.append(f"made with the VAE {params['VAE']!r}: check the VAE field")
    if lora_dir and guard is not None and guard.allows(lora_dir):
        try:
            check_lora_hashes(settings, str(guard.resolve(lora_dir)), "the PNG")
        except LorasmithError as exc:  # the CLI's words; its "--lora_dir" advice is the LoRA folder here
            found = [exc.summary] if exc.summary.startswith("<lora:") else []
            notes += found + [p for p in exc.problems if p.startswith("<lora:")] or [exc.summary]
    if settings.ti_hashes and not embeddings_dir:
        notes.append(f"made with the embeddings {', '.join(settings.ti_hashes)}: set embeddings_dir to their folder")
    elif settings.ti_hashes and guard is not None and guard.allows(embeddings_dir):
        try:
            check_embedding_hashes(settings, str(guard.resolve(embeddings_dir)), "the PNG")
        except LorasmithError as exc:  # one line per embedding, then the CLI's advice (left out here)
            notes += exc.problems[:-1] or [exc.summary]
    return {k: v for k, v in values.items() if k in actions}, notes


def embeddings_text(folder: str | None, guard) -> str:
    """The embedding names a prompt can use from `folder` (A1111: write the file name in the prompt)."""
    if not folder or not str(folder).strip():
        return ""
    if not guard.allows(folder):
        return f"embeddings_dir: {folder!r} is outside the allowed folders"
    from library.sampling.embeddings import embedding_names

    names = embedding_names(guard.resolve(folder))
    if not names:
        return f"No embeddings (.pt, .safetensors, .bin) in {guard.resolve(folder)}."
    return "Embeddings (write the name in a prompt, e.g. in the negative one): " + ", ".join(
        f"`{n}`" for n in names[:60]) + (f" and {len(names) - 60} more" if len(names) > 60 else "")


def read_png_fields(path: str, lora_dir: str | None = None, guard=None,
                    embeddings_dir: str | None = None) -> tuple[dict[str, Any], list[tuple[str, float]], list[str]]:
    """(field values, LoRA slots, notes) from a PNG's A1111 parameters; LoRAs and embeddings checked by hash."""
    from library.sampling.infotext import parse_parameters, read_png_parameters

    params = parse_parameters(read_png_parameters(path))
    values, notes = fields_from_parameters(params, lora_dir, guard, embeddings_dir)
    values["prompt"], loras = split_lora_tags(values.get("prompt", ""))
    return values, loras, notes


def grid_values(values: dict[str, Any], loras: list[tuple[str | None, Any]], lora_dir: str | None) -> dict[str, Any]:
    """The Evaluate tab's fields (by its form keys) for this prompt: the first LoRA becomes the grid's
    LoRA with a weight axis from 0 to its weight; further LoRAs stay in the prompt as tags."""
    picked = [(n, w) for n, w in loras if n and str(n).strip()]
    out = {"model": values.get("pretrained_model_name_or_path") or "", "prompt": values.get("prompt") or "",
           "negative": values.get("negative_prompt") or "", "steps": values.get("steps"),
           "cfg": values.get("cfg_scale"), "seed": values.get("seed"), "width": values.get("width"),
           "height": values.get("height"), "sampler": values.get("sampler") or "", "lora_dir": lora_dir or ""}
    if picked and lora_dir:
        from library.sampling.infotext import format_number

        name, weight = picked[0]
        w = 1.0 if weight in (None, "") else float(weight)
        out["lora"] = str(Path(lora_dir) / f"{str(name).strip()}.safetensors")
        out["x_type"], out["x_values"] = "LoRA weight", f"0-{format_number(w)} (+{format_number(w / 4)})"
        out["prompt"] = (out["prompt"].strip() + lora_tags(picked[1:])).strip()
    return out
