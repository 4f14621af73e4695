"""`lorasmith sample`: txt2img with A1111 prompt syntax, LoRAs and dynamic prompts.

The flags that mean the same as the trainer's (--pretrained_model_name_or_path,
--vae, --use_ema_weights, --seed, --clip_skip) are generated from `TrainConfig`,
so spelling, aliases and help cannot drift from `lorasmith train`.
`add_sample_arguments` and `request_from_args` are reused by `lorasmith grid`.
"""
from __future__ import annotations

import argparse

from library.config_io import add_config_arguments, config_defaults
from library.errors import SamplingError
from library.sampling.sampler_registry import sampler_names

SHARED_OPTIONS = ("pretrained_model_name_or_path", "vae", "use_ema_weights", "seed", "clip_skip")
# Where sampling's defaults genuinely differ from training's: A1111 writes "-1" for
# "pick a random seed" (the trainer's unset seed means the same) and "1" for "no clip
# skip" (the trainer's unset); both values end up in the PNG parameters as A1111 does.
SAMPLE_DEFAULTS = {"seed": -1, "clip_skip": 1}


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, SHARED_OPTIONS, required=("pretrained_model_name_or_path",),
                         defaults=config_defaults(SHARED_OPTIONS) | SAMPLE_DEFAULTS)
    p.add_argument("--output_dir", default="outputs/txt2img", help="folder for the PNGs (created if missing)")
    p.add_argument("--prompt", required=True, help="A1111 syntax: (word:1.2), [word], BREAK, <lora:NAME:0.8>, {a|b}")
    p.add_argument("--negative_prompt", default="", help="what to steer away from")
    p.add_argument("--steps", type=int, default=30, help="sampling steps")
    p.add_argument("--cfg_scale", type=float, default=7.0, help="classifier-free guidance scale")
    p.add_argument("--sampler", default="Euler a",
                   help=f"A1111 name ({', '.join(sampler_names())}) or an sd-scripts name (euler_a, k_dpm_2, ddim, ...)")
    p.add_argument("--width", type=int, default=512, help="image width, a multiple of 8")
    p.add_argument("--height", type=int, default=512, help="image height, a multiple of 8")
    p.add_argument("--batch_size", type=int, default=1, help="images generated together")
    p.add_argument("--batch_count", type=int, default=1, help="how many batches")
    p.add_argument("--lora_dir", default=None, help="folder where <lora:NAME:WEIGHT> tags find NAME.safetensors")
    p.add_argument("--wildcards_dir", default=None, help="folder of NAME.txt files for __NAME__ wildcards")


def request_from_args(args: argparse.Namespace, **overrides):
    from library.sampling.pipeline import SampleRequest

    names = ("prompt", "negative_prompt", "steps", "cfg_scale", "sampler", "width", "height", "seed", "batch_size",
             "batch_count", "clip_skip", "lora_dir", "wildcards_dir")
    fields = {name: getattr(args, name) for name in names}
    for name, value in SAMPLE_DEFAULTS.items():  # "--seed none" / "--clip_skip none" mean unset
        if fields[name] is None:
            fields[name] = value
    fields.update(overrides)
    return SampleRequest(**fields)


def load_bundle_from_args(args: argparse.Namespace, name: str | None = None):
    from library.models import load_model_bundle

    return load_model_bundle(name or args.pretrained_model_name_or_path, vae=args.vae,
                             use_ema_weights=args.use_ema_weights)


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
