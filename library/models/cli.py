"""`lorasmith inspect-model` and `lorasmith convert`: the first things run on a downloaded checkpoint."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from library.config_io import add_config_arguments, config_defaults
from library.errors import ModelLoadError

if TYPE_CHECKING:  # torch and the loaders are imported when a command runs, not for --help
    import torch

    from library.models.bundle import ModelFacts

DTYPE_NAMES = ("bf16", "fp16", "fp32")
LOAD_OPTIONS = ("pretrained_model_name_or_path", "vae", "use_ema_weights", "v2", "v_parameterization")


def register(subparsers: argparse._SubParsersAction) -> None:
    inspect = subparsers.add_parser("inspect-model", help="show what a base model is (architecture, sizes, hashes)")
    inspect.add_argument("model", nargs="?", default=None, help="the base model (or give --pretrained_model_name_or_path)")
    inspect.add_argument("--json", action="store_true", help="print the facts as JSON")
    _add_load_flags(inspect)
    inspect.set_defaults(func=inspect_model)

    convert = subparsers.add_parser("convert", help="convert a single-file checkpoint <-> diffusers folder")
    convert.add_argument("src", nargs="?", default=None, help="the base model (or give --pretrained_model_name_or_path)")
    convert.add_argument("dst", help="output: NAME.safetensors for a single file, any other path for a diffusers folder")
    convert.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                         help="precision to save in (default: what the source stores)")
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    _add_load_flags(convert)
    convert.set_defaults(func=convert_model)


def _add_load_flags(parser: argparse.ArgumentParser) -> None:
    """The trainer's model-loading flags, generated from TrainConfig (same names, aliases and help)."""
    add_config_arguments(parser, LOAD_OPTIONS, defaults=config_defaults(LOAD_OPTIONS))


def _model_source(positional: str | None, args: argparse.Namespace) -> str:
    """The model named positionally or by --pretrained_model_name_or_path (not two different ones)."""
    flag = args.pretrained_model_name_or_path
    if positional and flag and positional != flag:
        raise ModelLoadError(f"two models given: {positional!r} and --pretrained_model_name_or_path {flag!r}",
                             ["give the model once"])
    model = positional or flag
    if not model:
        raise ModelLoadError("no model given",
                             ["name it first (tiny, a diffusers folder or a .safetensors/.ckpt file)",
                              "or pass --pretrained_model_name_or_path"])
    return model


def format_facts(facts: ModelFacts) -> str:
    """Human-readable summary of a model's facts, one fact per line."""
    counts = " | ".join(f"{k} {v:,}" for k, v in facts.parameter_counts.items())
    lines = [
        ("model", facts.name),
        ("source", f"{facts.source} ({facts.source_format})"),
        ("architecture", f"{facts.family.display} [{facts.architecture}] (config: {facts.config_family or 'from the folder'})"),
    ]
    lines += [("detected by", why) for why in facts.detected_by]
    lines += [
        ("prediction", _prediction_line(facts)),
        ("weights", _weights_line(facts.weights_picked)),
        ("dtype", f"stored {facts.stored_dtype or '?'}, loaded {facts.dtype}"),
        ("parameters", counts),
        ("sha256", facts.model_hash),
    ]
    if facts.legacy_hash:
        lines.append(("legacy hash", facts.legacy_hash))
    if facts.vae_name:
        lines.append(("vae", f"{facts.vae_name} sha256 {facts.vae_hash}"))
    lines += [("note", note) for note in facts.notes]
    return "\n".join(f"{label + ':':<14}{value}" for label, value in lines)


def _prediction_line(facts: ModelFacts) -> str:
    """The prediction type and where it came from; an assumption says so and names the flag."""
    if not facts.prediction_source:
        return facts.prediction_type
    if facts.prediction_known:
        return f"{facts.prediction_type} (from {facts.prediction_source})"
    return f"{facts.prediction_type} -- cannot be known from the model; {facts.prediction_source}"


def _weights_line(picked: str) -> str:
    if picked == "non-ema":
        return "non-EMA (the file also holds EMA weights; --use_ema_weights picks those)"
    if picked == "ema":
        return "EMA (chosen with --use_ema_weights; the file also holds non-EMA weights)"
    return "the only set in the source"


def inspect_model(args: argparse.Namespace) -> int:
    from library.models.loading import load_model_bundle

    bundle = load_model_bundle(_model_source(args.model, args), vae=args.vae, use_ema_weights=args.use_ema_weights,
                               v2=args.v2, v_parameterization=args.v_parameterization)
    if args.json:
        print(json.dumps(bundle.facts.to_dict(), indent=2))
    else:
        print(format_facts(bundle.facts))
    return 0


def _save_dtype(choice: str | None, stored: str | None) -> tuple[str, torch.dtype]:
    """--dtype, else what the source stores, else fp32: (name, torch dtype)."""
    import torch

    name = choice or (stored if stored in DTYPE_NAMES else "fp32")
    return name, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def convert_model(args: argparse.Namespace) -> int:
    dst = Path(args.dst).expanduser()
    if dst.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise ModelLoadError(f"will not write {dst}: pickle checkpoints can carry code",
                             ["name the output .safetensors (single file) or give a folder path (diffusers)"])
    source = _model_source(args.src, args)
    src = Path(source).expanduser()
    if src.exists() and dst.exists() and src.resolve() == dst.resolve():
        raise ModelLoadError(f"{dst} is the source itself", ["write the converted model to a different path"])
    if dst.exists() and not args.overwrite:
        raise ModelLoadError(f"{dst} already exists", ["choose another name, or pass --overwrite to replace it"])
    from library.models.loading import load_model_bundle
    from library.models.saving import save_diffusers, save_single_file

    print(f"loading {source} ...", file=sys.stderr)
    bundle = load_model_bundle(source, vae=args.vae, use_ema_weights=args.use_ema_weights,
                               v2=args.v2, v_parameterization=args.v_parameterization)
    name, dtype = _save_dtype(args.dtype, bundle.facts.stored_dtype)
    print(f"writing {dst} ({name}) ...", file=sys.stderr)
    if dst.suffix.lower() == ".safetensors":
        save_single_file(bundle, dst, dtype)
    else:
        save_diffusers(bundle, dst, dtype)
    print(f"wrote {dst}")
    return 0
