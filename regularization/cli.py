"""`lorasmith reg …`: build regularization (class) image sets and check their balance.

    reg photos PHOTOS DEST --class_prompt woman --train_data_dir img/
        real photos cropped to the training resolution, images × repeats of them
    reg generate DEST --class_prompt woman --prompt "photo of a woman" --count 200 \\
        --pretrained_model_name_or_path model.safetensors
        generated with the base model; re-run to continue an interrupted set
    reg check TRAIN_DIR REG_DIR
        which reg images training will use, repeat or leave out

Training options (--resolution, --seed, --train_data_dir, --pretrained_model_name_or_path …)
mean what they mean to `lorasmith train`.
"""
from __future__ import annotations

import argparse
import json

from library.config_io import add_config_arguments
from library.config_resolve import resolve_config
from library.errors import DatasetError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("reg", help="regularization images: from photos, generated, balance check",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="reg_tool", metavar="TOOL", required=True)
    _add_photos(sub)
    _add_check(sub)
    _add_generate(sub)


def _add_photos(sub) -> None:
    p = sub.add_parser("photos", help="crop/resize real class photos to the training resolution, pick images × repeats")
    p.add_argument("src", metavar="PHOTOS", help="folder of class photos (never modified)")
    p.add_argument("dst", metavar="DEST", help="reg_data_dir to write <repeats>_<class>/ into")
    p.add_argument("--class_prompt", required=True, help="the class, e.g. 'woman' (names the folder)")
    p.add_argument("--count", type=int, default=None, help="how many to pick (default: training images × repeats)")
    p.add_argument("--repeats", type=int, default=1, help="repeats in the folder name (default 1)")
    p.add_argument("--face", action="store_true", help="crop around the largest face instead of the centre")
    p.add_argument("--upscale", action="store_true", help="also use photos smaller than the resolution")
    p.add_argument("--format", dest="fmt", choices=("png", "jpg", "webp"), default="png")
    p.add_argument("--overwrite", action="store_true", help="redo images that already exist")
    p.add_argument("--no_progress", action="store_true")
    add_config_arguments(p, ["train_data_dir", "resolution", "seed", "caption_extension"])
    p.set_defaults(func=_photos)


def _photos(args: argparse.Namespace) -> int:
    from library.data.specs import parse_resolution
    from regularization.real import reg_from_photos, training_items

    cfg = resolve_config(args)
    needed = args.count
    if needed is None:
        if not cfg.train_data_dir:
            raise DatasetError("how many reg images?", ["give --count N or --train_data_dir to count images × repeats"])
        needed = training_items(cfg.train_data_dir, cfg.caption_extension)
    result = reg_from_photos(args.src, args.dst, args.class_prompt, needed, parse_resolution(cfg.resolution),
                             repeats=args.repeats, seed=cfg.seed or 0, face=args.face, upscale=args.upscale,
                             fmt=args.fmt, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"{len(result.selected)} of {needed} reg images in {result.folder}")
    print("\n".join(result.run.summary_lines()))
    for warning in result.warnings:
        print(f"warning: {warning}")
    return 1 if result.run.unreadable else 0


def _add_check(sub) -> None:
    p = sub.add_parser("check", help="does a reg folder balance a training folder (sd-scripts' balancing)?")
    p.add_argument("train", metavar="TRAIN_DIR", help="train_data_dir with <repeats>_<tokens> folders")
    p.add_argument("reg", metavar="REG_DIR", help="reg_data_dir with <repeats>_<class> folders")
    p.add_argument("--json", action="store_true", help="print JSON, one entry per reg image")
    add_config_arguments(p, ["caption_extension"])
    p.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from regularization.check import check_balance, format_balance

    balance = check_balance(args.train, args.reg, getattr(args, "caption_extension", None))
    print(json.dumps(balance.to_dict(), indent=2) if args.json else format_balance(balance))
    return 0 if balance.balanced else 1



def _add_generate(sub) -> None:
    from library.sampling.cli import SAMPLER_HELP

    p = sub.add_parser("generate", help="generate class images with the base model (resumable, seeds recorded)")
    p.add_argument("dst", metavar="DEST", help="reg_data_dir to write <repeats>_<class>/ into")
    p.add_argument("--class_prompt", required=True, help="the class, e.g. 'woman' (names the folder)")
    p.add_argument("--prompt", default=None, help="generation prompt (default: the class prompt)")
    p.add_argument("--negative_prompt", default="")
    p.add_argument("--count", type=int, required=True, help="how many images the set holds")
    p.add_argument("--repeats", type=int, default=1, help="repeats in the folder name (default 1)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg_scale", type=float, default=7.0)
    p.add_argument("--sampler", default="Euler a", help=SAMPLER_HELP)
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    p.add_argument("--batch_size", type=int, default=1, help="images sampled together")
    p.add_argument("--overwrite", action="store_true", help="start the set over (other settings allowed)")
    p.add_argument("--no_progress", action="store_true")
    add_config_arguments(p, ["pretrained_model_name_or_path", "vae", "resolution", "clip_skip"])
    p.set_defaults(func=_generate)


def _generate(args: argparse.Namespace) -> int:
    from library.data.specs import parse_resolution
    from library.models import load_model_bundle
    from regularization.generate import (
        GenerationSettings,
        generate_set,
        sampler_render,
        with_model_facts,
    )

    cfg = resolve_config(args)
    if not cfg.pretrained_model_name_or_path:
        raise DatasetError("no base model", ["give --pretrained_model_name_or_path (a file, a folder or 'tiny')"])
    if args.seed < 0:
        raise DatasetError(f"--seed {args.seed}: a set needs a fixed seed to be resumable", ["use 0 or more"])
    width, height = parse_resolution(cfg.resolution)
    settings = GenerationSettings(
        prompt=args.prompt or args.class_prompt, negative_prompt=args.negative_prompt, width=width, height=height,
        steps=args.steps, cfg_scale=args.cfg_scale, sampler=args.sampler, seed=args.seed,
        clip_skip=cfg.clip_skip or 1)
    bundle = load_model_bundle(cfg.pretrained_model_name_or_path, vae=cfg.vae,
                               v2=cfg.v2, v_parameterization=cfg.v_parameterization)
    settings = with_model_facts(settings, bundle)
    result = generate_set(args.dst, args.class_prompt, args.count, settings, sampler_render(bundle, settings),
                          repeats=args.repeats, batch_size=args.batch_size, overwrite=args.overwrite,
                          progress=not args.no_progress)
    print(f"{result.folder}: {result.already_done} already there, {len(result.written)} generated, "
          f"{result.already_done + len(result.written)} of {args.count}")
    return 0
