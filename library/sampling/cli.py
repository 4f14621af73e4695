"""`lorasmith sample`: txt2img (and img2img with --init_image) with A1111 prompt syntax, LoRAs and dynamic prompts.

The flags that mean the same as the trainer's (--pretrained_model_name_or_path,
--vae, --use_ema_weights, --seed, --clip_skip) are generated from `TrainConfig`,
so spelling, aliases and help cannot drift from `lorasmith train`.
`add_sample_arguments`, `request_from_args` and `init_images_from_args` are reused by
`lorasmith grid`, so both commands read --init_image/--denoising_strength the same way.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from library.config import sample_defaults
from library.config_io import add_config_arguments, config_defaults
from library.data.specs import IMAGE_EXTENSIONS
from library.errors import LorasmithError, SamplingError

if TYPE_CHECKING:  # PIL and torch are imported when a command runs, not for --help
    from PIL import Image

SHARED_OPTIONS = ("pretrained_model_name_or_path", "vae", "use_ema_weights", "seed", "clip_skip")
# Where sampling's defaults differ from training's (seed -1, clip skip 1: AUTOMATIC1111's way of
# writing "random" and "last layer", which end up in the PNG parameters) is declared in library.config.
SAMPLE_DEFAULTS = sample_defaults(SHARED_OPTIONS)
# Written out rather than read from the sampler table, which needs torch (help must start fast).
SAMPLER_HELP = ("A1111 name such as 'Euler a', 'DPM++ 2M Karras', 'DDIM' or 'UniPC', or an sd-scripts name "
                "(euler_a, k_dpm_2, ddim, ...); an unknown name lists every choice")


def add_sample_arguments(p: argparse.ArgumentParser, prompt_required: bool = True) -> None:
    add_config_arguments(p, SHARED_OPTIONS, required=("pretrained_model_name_or_path",),
                         defaults=config_defaults(SHARED_OPTIONS) | SAMPLE_DEFAULTS)
    p.add_argument("--output_dir", default=None,
                   help="folder for the PNGs (created if missing; default outputs/txt2img, outputs/img2img with --init_image)")
    p.add_argument("--prompt", required=prompt_required, default=None,
                   help="A1111 syntax: (word:1.2), [word], BREAK, <lora:NAME:0.8>, {a|b}; settings per image as "
                        "<cfg_scale:5>, <steps:20>, <sampler_name:DPM++ 2M Karras>, <width:768>, <seed:1>, ...")
    p.add_argument("--negative_prompt", default="", help="what to steer away from")
    p.add_argument("--steps", type=int, default=30, help="sampling steps")
    p.add_argument("--cfg_scale", type=float, default=7.0, help="classifier-free guidance scale")
    p.add_argument("--guidance_rescale", type=float, default=0.0,
                   help="CFG rescale φ in [0, 1] (Lin et al. 2023; A1111's CFG Rescale extension, diffusers' guidance_rescale): "
                        "against washed-out or over-exposed images from v-prediction / zero-terminal-SNR models; 0.7 typical, 0 = off")
    p.add_argument("--sampler", default="Euler a",
                   help=SAMPLER_HELP)
    p.add_argument("--width", type=int, default=512, help="image width, a multiple of 8")
    p.add_argument("--height", type=int, default=512, help="image height, a multiple of 8")
    p.add_argument("--batch_size", type=int, default=1, help="images generated together")
    p.add_argument("--batch_count", type=int, default=1,
                   help="how many batches; 0 = until stopped (sample only: Ctrl-C finishes the current image, "
                        "A1111's Generate forever)")
    p.add_argument("--lora_dir", default=None, help="folder where <lora:NAME:WEIGHT> tags find NAME.safetensors")
    p.add_argument("--models_dir", default=None,
                   help="folder where <checkpoint:NAME> prompt tags find NAME.safetensors/.ckpt (sample switches "
                        "models per image; without it the tag must name the loaded model)")
    p.add_argument("--embeddings_dir", default=None,
                   help="folder of textual-inversion embeddings (A1111's .pt, .safetensors): a prompt or negative "
                        "prompt uses one by its file name, e.g. 'EasyNegative', with emphasis like any word")
    p.add_argument("--wildcards_dir", default=None, help="folder of NAME.txt files for __NAME__ wildcards")
    p.add_argument("--init_image", default=None,
                   help="img2img: an image used for every image, or a folder whose images (sorted by name) are used "
                        "in turn; each is resized to --width x --height")
    p.add_argument("--denoising_strength", type=float, default=None,
                   help="img2img / hires fix: how much of the init image (or first pass) is re-drawn, "
                        "in (0, 1] (default 0.75)")
    p.add_argument("--vae_tiling", action="store_true",
                   help="decode the VAE in blended tiles, so large images fit in less memory")
    p.add_argument("--attention_slicing", action="store_true",
                   help="compute UNet attention in slices: lower peak memory, slower")
    p.add_argument("--enable_hr", action="store_true",
                   help="hires fix (A1111 txt2img): sample at --width x --height, upscale, then re-draw at "
                        "--denoising_strength")
    p.add_argument("--hr_scale", type=float, default=2.0, help="hires fix: upscale factor (unless --hr_resize_x/y)")
    p.add_argument("--hr_upscaler", default="Latent",
                   help='hires fix upscaler: Latent, "Latent (nearest)" (and A1111\'s other Latent modes), Lanczos, '
                        "or an upscaler model file (.pth/.safetensors, path or name in --models_dir; needs spandrel)")
    p.add_argument("--hr_second_pass_steps", type=int, default=0, help="hires fix steps; 0 = same as --steps")
    p.add_argument("--hr_resize_x", type=int, default=0, help="hires fix: target width instead of --hr_scale")
    p.add_argument("--hr_resize_y", type=int, default=0, help="hires fix: target height instead of --hr_scale")


def request_from_args(args: argparse.Namespace, **overrides):
    from library.sampling.pipeline import SampleRequest

    names = ("prompt", "negative_prompt", "steps", "cfg_scale", "guidance_rescale", "sampler", "width", "height", "seed",
             "batch_size", "batch_count", "clip_skip", "lora_dir", "wildcards_dir", "models_dir", "embeddings_dir")
    fields = {name: getattr(args, name) for name in names}
    for name, value in SAMPLE_DEFAULTS.items():  # "--seed none" / "--clip_skip none" mean unset
        if fields[name] is None:
            fields[name] = value
    if args.denoising_strength is not None:
        if not (getattr(args, "init_image", None) or getattr(args, "enable_hr", False)
                or getattr(args, "from_png", None)):
            raise SamplingError(f"--denoising_strength {args.denoising_strength} is given without --init_image",
                                [("denoising strength only means something in img2img: add --init_image FILE "
                                  "or leave --denoising_strength out")])
        fields["denoising_strength"] = args.denoising_strength
    if getattr(args, "enable_hr", False):
        fields.update(enable_hr=True, hr_scale=args.hr_scale, hr_upscaler=args.hr_upscaler,
                      hr_second_pass_steps=args.hr_second_pass_steps, hr_resize_x=args.hr_resize_x,
                      hr_resize_y=args.hr_resize_y)
        if args.denoising_strength is None:
            fields["denoising_strength"] = 0.7  # A1111's hires default
    fields.update(overrides)
    return SampleRequest(**fields)


def output_dir_from_args(args: argparse.Namespace) -> str:
    """--output_dir, else A1111's habit of keeping txt2img and img2img results apart."""
    return args.output_dir or ("outputs/img2img" if args.init_image else "outputs/txt2img")


def init_images_from_args(args: argparse.Namespace) -> list[Image.Image] | None:
    """The --init_image images (None for txt2img), read before any model is loaded."""
    return load_init_images(args.init_image) if args.init_image else None


def load_init_images(path: str | os.PathLike[str]) -> list[Image.Image]:
    """An image file, or a folder's images sorted by name, as RGB images; every unreadable file named at once."""
    path = Path(os.path.expanduser(str(path)))
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise SamplingError(f"--init_image {path}: the folder holds no images",
                                [f"put {', '.join(IMAGE_EXTENSIONS)} files in it, or give one image file"])
    elif path.is_file():
        files = [path]
    else:
        raise SamplingError(f"--init_image {path}: no such file or folder", ["give an image file or a folder of images"])

    images, problems = [], []
    from library.data.images import open_image  # upright, every mode, alpha on white, pixel cap

    for file in files:
        try:
            images.append(open_image(file))
        except LorasmithError as exc:
            problems.append(str(exc).split("\n")[0])
    if problems:
        raise SamplingError(f"--init_image {path}: cannot read {len(problems)} image(s)", problems)
    return images


def cycle_images(images: list[Image.Image], count: int) -> list[Image.Image]:
    """One init image per image to make: a folder's images in turn, starting again after the last."""
    return [images[i % len(images)] for i in range(count)]


def load_bundle_from_args(args: argparse.Namespace, name: str | None = None, vae: str | None = None):
    """The model (or `name`) with --vae, or with `vae` when given ("" = the model's own VAE: a grid's VAE axis)."""
    from library.models import load_model_bundle

    from library.sampling.memory import apply_memory_options

    bundle = load_model_bundle(name or args.pretrained_model_name_or_path, vae=args.vae if vae is None else vae,
                               use_ema_weights=args.use_ema_weights)
    apply_memory_options(bundle, getattr(args, "vae_tiling", False), getattr(args, "attention_slicing", False))
    return bundle


DESCRIPTION = """txt2img (and img2img with --init_image) with AUTOMATIC1111's prompt syntax, LoRAs and dynamic prompts.

--pretrained_model_name_or_path, --vae, --use_ema_weights, --seed and --clip_skip mean
the same as in `lorasmith train`; --seed -1 picks a random seed and --clip_skip 1 uses
the last text-encoder layer, as in AUTOMATIC1111."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="generate images with the bundled sampler (A1111 prompt syntax)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sample_arguments(p, prompt_required=False)
    p.add_argument("--from_png", default=None, metavar="PNG",
                   help="regenerate from a PNG's A1111 infotext (ours or AUTOMATIC1111's): prompt, negative prompt, "
                        "sampler and schedule type, steps, CFG, seed, size, clip skip, LoRAs (checked against its "
                        "Lora hashes) and hires fix; flags given beside it override those values")
    p.set_defaults(func=run_sample)
    track_given_flags(p)


def track_given_flags(parser: argparse.ArgumentParser) -> None:
    """Record which options were typed (not defaulted) as `args.given_flags`, so --from_png knows what overrides.

    argparse cannot tell "--steps 30" from the default 30; parsing the same words again with every
    default suppressed can. Wraps this (sub)parser's parse_known_args, which the subcommand dispatch calls.
    """
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, rest = original(args, namespace)
        saved = [(a, a.default, a.required) for a in parser._actions]
        try:
            for action in parser._actions:
                action.default, action.required = argparse.SUPPRESS, False
            typed, _ = original(args, argparse.Namespace())
        finally:
            for action, default, required in saved:
                action.default, action.required = default, required
        ns.given_flags = frozenset(vars(typed))
        return ns, rest

    parser.parse_known_args = parse_known_args


def request_from_png(args: argparse.Namespace):
    """--from_png: the PNG's settings, then every flag the user typed on top; LoRA files checked by hash."""
    import dataclasses

    from library.sampling.from_png import (check_embedding_hashes, check_lora_hashes, resolve_upscaler,
                                           settings_from_png)

    settings = settings_from_png(args.from_png)
    given = getattr(args, "given_flags", frozenset())
    typed = request_from_args(args, prompt=args.prompt if args.prompt is not None else settings.fields["prompt"])
    request = dataclasses.replace(typed, **{k: v for k, v in settings.fields.items() if k not in given})
    if request.enable_hr and "hr_upscaler" not in given:
        request = dataclasses.replace(request, hr_upscaler=resolve_upscaler(request.hr_upscaler, request.models_dir))
    if "prompt" not in given:
        check_lora_hashes(settings, request.lora_dir, str(args.from_png))
    if "prompt" not in given or "negative_prompt" not in given:
        check_embedding_hashes(settings, request.embeddings_dir, str(args.from_png))
    if settings.not_restored:
        print(f"{args.from_png}: not restored (not supported here): {', '.join(settings.not_restored)}")
    return request, settings


def run_sample(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from library.sampling.infotext import next_image_path, save_png
    from library.sampling.pipeline import SamplingSession, plan_jobs, validate_request

    png_settings = None
    if getattr(args, "from_png", None):
        request, png_settings = request_from_png(args)
    elif args.prompt is None:
        raise SamplingError("no prompt: give --prompt TEXT, or --from_png IMAGE to regenerate an image",
                            ["the prompt may hold A1111 syntax, <lora:NAME:W> tags and settings tags"])
    else:
        request = request_from_args(args)
    if request.batch_count == 0:
        return run_until_stopped(args, request, png_settings)
    validate_request(request)
    init = init_images_from_args(args)
    seed, jobs = plan_jobs(request)  # checks prompts, wildcards and LoRA tags before loading the model
    if request.seed < 0:
        print(f"seed: {seed}")
    init_images = cycle_images(init, len(jobs)) if init else None
    total = sum(model_steps(job.request or request, img2img=init is not None) for job in jobs)  # <steps:N> tags
    images = [None] * len(jobs)
    output_dir = output_dir_from_args(args)

    def save(made) -> None:
        for img in made:
            path = save_png(img.image, next_image_path(output_dir, img.seed), img.parameters)
            # The progress bar is cleared first, so a reader of stdout and stderr together (the GUI's
            # log) sees this line on its own, not glued to the bar's last redraw.
            with tqdm.external_write_mode():
                print(f"{path}  (seed {img.seed})", flush=True)

    # <checkpoint:NAME> tags with --models_dir: one model loaded at a time. With one model the
    # images are saved as each batch is decoded (the GUI shows them then); with several they are
    # saved at the end, in job order, so file numbers follow the prompts rather than the models.
    groups = list(checkpoint_groups(jobs, switch=bool(args.models_dir)))
    streaming = len(groups) == 1
    with tqdm(total=total, desc="img2img" if init else "sampling", unit="step") as bar:
        for checkpoint, indices in groups:
            session = SamplingSession(load_bundle_from_args(args, checkpoint))
            if png_settings is not None and checkpoint is None:
                warn_model_differs(png_settings, session.bundle)
            made = session.run_jobs(request, [jobs[i] for i in indices], on_step=bar.update,
                                    max_batch=request.batch_size,
                                    init_images=[init_images[i] for i in indices] if init_images else None,
                                    on_batch=save if streaming else None)
            for i, image in zip(indices, made):
                images[i] = image
            del session
    if not jobs:
        raise SamplingError("nothing was generated")
    if not streaming:
        save(images)
    return 0


def run_until_stopped(args: argparse.Namespace, request, png_settings=None) -> int:
    """--batch_count 0: batch after batch on consecutive seeds, each image saved as soon as it is made."""
    import dataclasses

    from tqdm import tqdm

    from library.sampling.forever import StopFlag, batches_until_stopped
    from library.sampling.infotext import next_image_path, save_png
    from library.sampling.pipeline import SamplingSession, plan_jobs, validate_request

    validate_request(dataclasses.replace(request, batch_count=1))
    init = init_images_from_args(args)
    plan_jobs(dataclasses.replace(request, batch_count=1))  # prompt, wildcard and LoRA problems before loading
    output_dir = output_dir_from_args(args)
    sessions: dict[str | None, SamplingSession] = {}  # the model loaded now (one at a time)
    made = 0
    stop = StopFlag()
    print("generating until stopped: Ctrl-C finishes the current image")
    with stop.on_ctrl_c(), tqdm(desc="img2img" if init else "sampling", unit="step") as bar:
        for batch in batches_until_stopped(request, stop):
            _seed, jobs = plan_jobs(batch)
            init_images = cycle_images(init, made + len(jobs))[made:] if init else None
            for checkpoint, indices in checkpoint_groups(jobs, switch=bool(args.models_dir)):
                if checkpoint not in sessions:
                    sessions.clear()
                    sessions[checkpoint] = SamplingSession(load_bundle_from_args(args, checkpoint))
                    if png_settings is not None and checkpoint is None:
                        warn_model_differs(png_settings, sessions[checkpoint].bundle)
                images = sessions[checkpoint].run_jobs(
                    batch, [jobs[i] for i in indices], on_step=bar.update, max_batch=batch.batch_size,
                    init_images=[init_images[i] for i in indices] if init_images else None)
                for img in images:
                    path = save_png(img.image, next_image_path(output_dir, img.seed), img.parameters)
                    bar.write(f"{path}  (seed {img.seed})")
            made += len(jobs)
    print(f"stopped after {made} image(s)")
    return 0


def warn_model_differs(settings, bundle) -> None:
    """--from_png with another checkpoint than the image's: say so (the image will differ), don't refuse."""
    from library.sampling.infotext import model_label

    loaded = (bundle.facts.model_hash or "")[:10]
    if settings.model_hash and loaded and settings.model_hash.lower() != loaded.lower():
        print(f"note: the image was made with model {settings.model or '?'} [{settings.model_hash}], "
              f"the loaded model is {bundle.facts.name} [{loaded}]: the result will differ")
    vae = model_label(bundle.facts.vae_name) if bundle.facts.vae_name else None
    if settings.vae != vae:
        own = "the model's own"
        print(f"note: the image was made with VAE {settings.vae or own}, now {vae or own} is loaded (--vae): "
              "the result will differ")


def checkpoint_groups(jobs, switch: bool) -> list[tuple[str | None, list[int]]]:
    """Job indices per `<checkpoint:...>` file (None: the --pretrained_model_name_or_path model), first seen first.

    Without `switch` (no --models_dir) every job runs on the given model, which a tag must then name.
    """
    groups: dict[str | None, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.checkpoint if switch else None, []).append(i)
    return list(groups.items())


def model_steps(request, img2img: bool) -> int:
    """Sampler steps per image (for the progress bar): img2img runs only the schedule's tail."""
    import torch

    from library.sampling.pipeline import img2img_sigmas

    if not img2img:
        if getattr(request, "enable_hr", False):
            from library.sampling.hires import second_pass_steps

            return request.steps + second_pass_steps(request.steps, request.hr_second_pass_steps,
                                                     request.denoising_strength)[1]
        return request.steps
    return len(img2img_sigmas(torch.zeros(request.steps + 1), request.steps, request.denoising_strength)) - 1
