"""`lorasmith sample`: txt2img with A1111 prompt syntax, LoRAs and dynamic prompts.

Flags share the trainer's names where they mean the same thing
(--pretrained_model_name_or_path, --output_dir, --seed, --clip_skip, --vae).
`add_sample_arguments` and `request_from_args` are reused by `lorasmith grid`.
"""
from __future__ import annotations

import argparse

from library.errors import SamplingError
from library.sampling.sampler_registry import sampler_names


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrained_model_name_or_path", required=True,
                   help="base model: 'tiny', a diffusers folder, or a .safetensors/.ckpt file")
    p.add_argument("--vae", default=None, help="a separate VAE file or folder to decode with")
    p.add_argument("--output_dir", default="outputs/txt2img", help="folder for the PNGs (created if missing)")
    p.add_argument("--prompt", required=True, help="A1111 syntax: (word:1.2), [word], BREAK, <lora:NAME:0.8>, {a|b}")
    p.add_argument("--negative_prompt", default="", help="what to steer away from")
    p.add_argument("--steps", type=int, default=30, help="sampling steps")
    p.add_argument("--cfg_scale", type=float, default=7.0, help="classifier-free guidance scale")
    p.add_argument("--sampler", default="Euler a",
                   help=f"A1111 name ({', '.join(sampler_names())}) or an sd-scripts name (euler_a, k_dpm_2, ddim, ...)")
    p.add_argument("--width", type=int, default=512, help="image width, a multiple of 8")
    p.add_argument("--height", type=int, default=512, help="image height, a multiple of 8")
    p.add_argument("--seed", type=int, default=-1, help="-1 picks a random seed (printed and written into the PNG)")
    p.add_argument("--batch_size", type=int, default=1, help="images generated together")
    p.add_argument("--batch_count", type=int, default=1, help="how many batches")
    p.add_argument("--clip_skip", type=int, default=1, help="use the text encoder's N-th layer from the end (2 = skip one)")
    p.add_argument("--lora_dir", default=None, help="folder where <lora:NAME:WEIGHT> tags find NAME.safetensors")
    p.add_argument("--wildcards_dir", default=None, help="folder of NAME.txt files for __NAME__ wildcards")


def request_from_args(args: argparse.Namespace, **overrides):
    from library.sampling.pipeline import SampleRequest

    names = ("prompt", "negative_prompt", "steps", "cfg_scale", "sampler", "width", "height", "seed", "batch_size",
             "batch_count", "clip_skip", "lora_dir", "wildcards_dir")
    fields = {name: getattr(args, name) for name in names}
    fields.update(overrides)
    return SampleRequest(**fields)


def load_bundle_from_args(args: argparse.Namespace, name: str | None = None):
    from library.models import load_model_bundle

    return load_model_bundle(name or args.pretrained_model_name_or_path, vae=args.vae)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="generate images with the bundled sampler (A1111 prompt syntax)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sample_arguments(p)
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from library.sampling.infotext import next_image_path, save_png
    from library.sampling.pipeline import SamplingSession, plan_jobs, validate_request

    request = request_from_args(args)
    validate_request(request)
    seed, jobs = plan_jobs(request)  # checks prompts, wildcards and LoRA tags before loading the model
    if request.seed < 0:
        print(f"seed: {seed}")
    bundle = load_bundle_from_args(args)
    session = SamplingSession(bundle)
    total = len(jobs) * request.steps
    with tqdm(total=total, desc="sampling", unit="step") as bar:
        images = session.run_jobs(request, jobs, on_step=bar.update, max_batch=request.batch_size)
    if not images:
        raise SamplingError("nothing was generated")
    for img in images:
        path = save_png(img.image, next_image_path(args.output_dir, img.seed), img.parameters)
        print(f"{path}  (seed {img.seed})")
    return 0
