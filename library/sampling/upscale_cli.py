"""`lorasmith upscale IN OUT`: A1111's Extras upscaling, offline — Lanczos or an upscaler model, tiled."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "upscale", help="upscale an image with Lanczos or an ESRGAN/RealESRGAN/SwinIR model (A1111's Extras)",
        description="Upscale IN to OUT by --scale. With --model the upscaler file (.pth/.safetensors, loaded "
                    "weights-only with spandrel) runs in overlapping tiles, then Lanczos fits the exact size; "
                    "without --model it is plain Lanczos.")
    p.add_argument("input", metavar="IN", help="image to upscale")
    p.add_argument("output", metavar="OUT", help="where to write the upscaled image (format from the extension)")
    p.add_argument("--model", default=None, help="upscaler model file; omit for Lanczos")
    p.add_argument("--scale", type=float, default=2.0, help="size factor (default 2)")
    p.add_argument("--tile", type=int, default=512,
                   help="tile size in input pixels for model upscaling; 0 = whole image at once (default 512)")
    p.add_argument("--tile_overlap", type=int, default=32, help="overlap between tiles, blended (default 32)")
    p.set_defaults(func=run_upscale)


def run_upscale(args: argparse.Namespace) -> int:
    from library.errors import SamplingError
    from library.fileio import atomic_path
    from library.sampling.upscale import ModelUpscaler, lanczos_upscale, open_input_image

    if args.scale <= 0:
        raise SamplingError(f"--scale must be positive, got {args.scale}")
    image = open_input_image(args.input)
    width, height = int(image.width * args.scale), int(image.height * args.scale)
    if args.model:
        out = ModelUpscaler(args.model, tile=args.tile, overlap=args.tile_overlap).upscale(image, width, height)
    else:
        out = lanczos_upscale(image, width, height)
    from pathlib import Path

    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(Path(args.output).suffix.lower(), "PNG")
    with atomic_path(args.output) as tmp:
        out.save(tmp, format=fmt)
    print(f"{args.input} {image.width}x{image.height} -> {args.output} {width}x{height}")
    return 0
