"""`lorasmith grid`: X/Y/Z comparison grids with A1111's axis types and value syntax.

Pick the best epoch in one command:
    lorasmith grid --pretrained_model_name_or_path base.safetensors --prompt "photo of ohwx man" \\
        --lora 'out/name-*.safetensors' --weights "0.8-1.2 (+0.1)"
gives epochs (columns, final file last) × LoRA weights (rows). Any axis type can be
given with --x_type/--x_values (and y, z): Prompt S/R, LoRA, LoRA weight, CFG Scale,
Seed, Steps, Sampler, Checkpoint, Clip skip, Size, Negative S/R, and Denoising for an
img2img grid: --init_image FILE makes every cell start from that image, e.g.
    lorasmith grid ... --init_image photo.png --x_type Denoising --x_values "0.3, 0.5, 0.7"
"""
from __future__ import annotations

import argparse

from library.errors import SamplingError
from library.evaluation.axes import AXIS_TYPES
from library.sampling.cli import (
    add_sample_arguments,
    init_images_from_args,
    load_bundle_from_args,
    output_dir_from_args,
    request_from_args,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("grid", help="X/Y/Z comparison grids (epochs x weights, prompts, CFG, ...)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sample_arguments(p)
    types = ", ".join(AXIS_TYPES)
    for axis in ("x", "y", "z"):
        p.add_argument(f"--{axis}_type", default=None, help=f"{axis.upper()} axis type: {types}")
        p.add_argument(f"--{axis}_values", default=None,
                       help='comma list (CSV quoting) or ranges: 1-5, 1-10 (+2), 10-1 (-3), 1-10 [5], 0.5-1.5 (+0.25)')
    p.add_argument("--lora", default=None, help="shortcut: LoRA files or a quoted glob as an axis (epochs, final last)")
    p.add_argument("--weights", default=None, help='shortcut: LoRA weights as an axis, e.g. "0.8-1.2 (+0.1)"')
    p.add_argument("--margin", type=int, default=0, help="pixels between cells")
    p.add_argument("--grid_batch_size", type=int, default=4,
                   help="cells differing only in seed or prompt generated together")
    p.add_argument("--grid_max_megapixels", type=float, default=200.0, help="refuse grids larger than this")
    p.add_argument("--no_cells", action="store_true", help="do not save each cell as its own PNG")
    p.add_argument("--scores", default=None,
                   help="evaluation.json from `lorasmith evaluate`: write each cell's fidelity (F) and drift (D) "
                        "into the grid and frame the recommended epoch and weight")
    p.set_defaults(func=run_grid_command)


def axis_specs(args: argparse.Namespace) -> list[tuple[str | None, str | None]]:
    """The three (type, values) slots with the --lora/--weights shortcut placed on free slots."""
    slots = [(getattr(args, f"{a}_type"), getattr(args, f"{a}_values")) for a in ("x", "y", "z")]
    problems = [f"--{a}_values is given without --{a}_type" for a, (t, v) in zip("xyz", slots) if v and not t]
    wanted = [(t, v) for t, v in (("LoRA", args.lora), ("LoRA weight", args.weights)) if v]
    for type_name, values in wanted:
        free = [i for i, (t, _v) in enumerate(slots) if not t]
        if not free:
            problems.append(f"no free axis for --{'lora' if type_name == 'LoRA' else 'weights'}: X, Y and Z are all used")
            continue
        slots[free[0]] = (type_name, values)
    if problems:
        raise SamplingError("grid axes are not complete", problems)
    return slots


def grid_init_image(args: argparse.Namespace):
    """The one init image of an img2img grid (None for txt2img): cells compare settings on the same image."""
    images = init_images_from_args(args)
    if images is None:
        return None
    if len(images) > 1:
        raise SamplingError(f"--init_image {args.init_image} holds {len(images)} images; a grid uses one",
                            ["give one image file: every cell starts from it, so the cells stay comparable"])
    return images[0]


def run_grid_command(args: argparse.Namespace) -> int:
    from library.evaluation.axes import CellSettings
    from library.evaluation.grid import parse_axes, run_grid

    if args.batch_size != 1 or args.batch_count != 1:
        raise SamplingError("a grid cell is one image: --batch_size and --batch_count must be 1",
                            ["add a Seed axis for several images per setting; --grid_batch_size sets batching"])
    base = CellSettings(request_from_args(args), args.pretrained_model_name_or_path,
                        init_image=grid_init_image(args))
    axes = parse_axes(base, axis_specs(args), args.lora_dir)
    if not any(axes):
        raise SamplingError("a grid needs at least one axis", ["give --x_type/--x_values, or --lora/--weights"])
    cell_note = None
    if args.scores:
        from library.evaluation.score_report import read_scores, score_notes

        cell_note = score_notes(*read_scores(args.scores))
    result = run_grid(base, axes, output_dir_from_args(args),
                      load_bundle=lambda name, vae=None: load_bundle_from_args(args, name, vae),
                      max_batch=max(1, args.grid_batch_size), margin=max(0, args.margin),
                      max_megapixels=args.grid_max_megapixels, save_cells=not args.no_cells, cell_note=cell_note)
    for path in result.sub_grid_paths:
        print(path)
    print(f"grid: {result.grid_path}")
    return 0
