"""`lorasmith lora resize | merge | extract`: the toolbox on the command line.

Flags keep sd-scripts' spellings (networks/resize_lora.py, svd_merge_lora.py,
merge_lora.py, extract_lora_from_models.py); `--pretrained_model_name_or_path` and
`--save_precision` are generated from TrainConfig like every other command's.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from library.config_io import add_config_arguments, config_defaults
from library.errors import LoRAFileError

_SHARED = ("save_precision",)


def _progress(desc: str) -> Callable[[int, int, str], None]:
    """A tqdm bar on stderr, created on the first report (the total is known only then)."""
    from tqdm import tqdm

    bar: list = []

    def report(done: int, total: int, what: str) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc=desc, unit="module", file=sys.stderr, leave=False, disable=None))
        bar[0].update(done - bar[0].n)
        if done >= total:
            bar[0].close()

    return report


def register(subparsers: argparse._SubParsersAction) -> None:
    lora = subparsers.add_parser("lora", help="LoRA toolbox: resize, merge, extract",
                                 description="Post-process LoRA files (sd-scripts' networks/*.py tools).")
    sub = lora.add_subparsers(dest="lora_command", metavar="TOOL", required=True)
    _register_resize(sub)
    _register_merge(sub)
    _register_extract(sub)


def _common(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, _SHARED, defaults=config_defaults(_SHARED))
    p.add_argument("--device", default=None, help="device for the SVDs, e.g. cuda (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never an input)")


def _register_resize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resize", help="lower a LoRA's rank by SVD (sd-scripts resize_lora.py)")
    p.add_argument("input", metavar="IN", help="LoRA file to resize")
    p.add_argument("output", metavar="OUT", help="resized LoRA (.safetensors)")
    p.add_argument("--new_rank", type=int, default=4, help="rank of the output (the maximum with --dynamic_method)")
    p.add_argument("--new_conv_rank", type=int, default=None, help="rank for 3x3 conv modules (default: --new_rank)")
    p.add_argument("--dynamic_method", choices=("sv_ratio", "sv_fro", "sv_cumulative"), default=None,
                   help="pick each module's rank from its singular values")
    p.add_argument("--dynamic_param", type=float, default=None,
                   help="sv_ratio: max S[0]/S[k]; sv_fro, sv_cumulative: fraction to keep (e.g. 0.9)")
    p.add_argument("--verbose", action="store_true",
                   help="also print each module's sum(S) retained and max(S) ratio (sd-scripts' columns)")
    _common(p)
    p.set_defaults(func=_resize)


def _register_merge(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="LoRAs into a checkpoint (with a base model) or into one LoRA",
                       description="With --pretrained_model_name_or_path: merge the LoRAs into that model "
                       "(OUT.safetensors single file in the LDM layout, or a diffusers folder). Without it: "
                       "merge the LoRAs into one LoRA, by concatenating ranks (exact) or, with --new_rank, by SVD.")
    base_flag = ("pretrained_model_name_or_path",)
    add_config_arguments(p, base_flag, defaults=config_defaults(base_flag))
    p.add_argument("--lora", action="append", required=True, metavar="FILE[:WEIGHT]",
                   help="a LoRA and its weight (default 1.0); repeat for several")
    p.add_argument("-o", "--output", "--save_to", dest="output", required=True, metavar="OUT",
                   help="output file (.safetensors) or diffusers folder")
    p.add_argument("--save_as", choices=("safetensors", "diffusers"), default=None,
                   help="checkpoint output format (default: from OUT's name)")
    p.add_argument("--new_rank", type=int, default=None, help="LoRA merge: SVD-merge to this rank")
    p.add_argument("--new_conv_rank", type=int, default=None,
                   help="LoRA merge: rank for 3x3 convs (default --new_rank)")
    p.add_argument("--clamp_quantile", type=float, default=0.99,
                   help="SVD merge: clamp factors at this quantile (1 = no clamping)")
    _common(p)
    p.set_defaults(func=_merge)


def _register_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="a LoRA from a fine-tuned checkpoint and its base "
                       "(sd-scripts extract_lora_from_models.py)")
    p.add_argument("--base", "--model_org", dest="base", required=True, help="the original model")
    p.add_argument("--tuned", "--model_tuned", dest="tuned", required=True, help="the fine-tuned / DreamBooth model")
    p.add_argument("-o", "--output", "--save_to", dest="output", required=True, metavar="OUT", help="LoRA to write")
    p.add_argument("--dim", type=int, default=4, help="rank of the LoRA (default 4)")
    p.add_argument("--conv_dim", type=int, default=None, help="rank for 3x3 convs (default: no conv modules)")
    p.add_argument("--clamp_quantile", type=float, default=0.99, help="clamp factors at this quantile (1 = none)")
    p.add_argument("--min_diff", type=float, default=0.01,
                   help="keep the text encoder only if some weight differs by more than this")
    p.add_argument("--no_metadata", action="store_true", help="write only the minimum ss_* metadata")
    p.add_argument("--sdxl", action="store_true",
                   help="the models are SDXL (detected anyway; given, it is checked against the files)")
    p.add_argument("--v2", action="store_true",
                   help="the models are SD2.x (detected anyway; given, it is checked against the files)")
    p.add_argument("--v_parameterization", action="store_true",
                   help="write v-prediction metadata (default: what the base says; SD2.x: v, as sd-scripts)")
    _common(p)
    p.set_defaults(func=_extract)


def _resize(args: argparse.Namespace) -> int:
    from library.lora.tools.resize import ResizeOptions, resize_lora

    opts = ResizeOptions(args.new_rank, args.new_conv_rank, args.dynamic_method, args.dynamic_param,
                         args.save_precision, args.device, args.verbose)
    report = resize_lora(args.input, args.output, opts, overwrite=args.overwrite, progress=_progress("resizing"),
                         command=sys.argv)
    print("\n".join(report.lines(verbose=args.verbose)))
    print(f"wrote {args.output}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from library.lora.tools.merge import merge_loras, parse_lora_spec
    from library.lora.tools.merge_checkpoint import merge_into_checkpoint

    loras = [parse_lora_spec(s) for s in args.lora]
    if args.pretrained_model_name_or_path:
        if args.new_rank is not None:
            raise LoRAFileError("--new_rank is for merging LoRAs into one LoRA; a merge into a model has no rank",
                                ["leave out --pretrained_model_name_or_path to make one LoRA"])
        merge_into_checkpoint(args.pretrained_model_name_or_path, loras, args.output,
                              save_precision=args.save_precision, save_as=args.save_as, overwrite=args.overwrite,
                              progress=_progress("merging"), command=sys.argv)
    else:
        merge_loras(loras, args.output, new_rank=args.new_rank, new_conv_rank=args.new_conv_rank,
                    clamp_quantile=args.clamp_quantile, save_precision=args.save_precision, device=args.device,
                    overwrite=args.overwrite, progress=_progress("merging"), command=sys.argv)
    print(f"wrote {args.output}")
    return 0


def _extract(args: argparse.Namespace) -> int:
    from library.lora.tools.extract import ExtractOptions, extract_lora

    opts = ExtractOptions(args.dim, args.conv_dim, args.clamp_quantile, args.min_diff, args.device,
                          args.save_precision, args.no_metadata, sdxl=args.sdxl, v2=args.v2,
                          v_parameterization=args.v_parameterization)
    report = extract_lora(args.base, args.tuned, args.output, opts, overwrite=args.overwrite,
                          progress=_progress("extracting"), command=sys.argv)
    lines = report.lines()
    print("\n".join([lines[0], lines[-1]]))
    print(f"wrote {args.output}")
    return 0
