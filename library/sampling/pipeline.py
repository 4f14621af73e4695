"""txt2img and img2img with the bundled samplers: request in, images with A1111 parameters out.

`generate(bundle, request)` is the one-call form; a `SamplingSession` keeps the prompt
cache and the applied LoRAs between calls, which is what grids and regularization
image generation use. Image i of a request uses seed + i for its starting noise, its
ancestral noise and its dynamic-prompt choices, so any single image can be
reproduced alone from the seed in its parameters.

img2img follows A1111's default step convention: with strength s and n steps the
sampler runs the last int(s * n) + 1 sigmas of the n-step schedule, starting from
the init image's latent plus the seed's noise at the first of them.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from library.errors import SamplingError
from library.sampling.denoiser import DiscreteDenoiser
from library.sampling.dynamic_prompts import expand_prompt
from library.sampling.infotext import MODEL_EXTENSIONS, format_infotext, format_number, model_label, version_string
from library.sampling.lora_stack import LoraStack, lora_short_hash, resolve_lora, resolve_named_file
from library.sampling.prompt_parser import extract_prompt_tags
from library.sampling.sampler_registry import infotext_sampler, resolve_sampler
from library.sampling.schedules import sampling_scheduler_config
from library.sampling.sdxl_conditioning import make_prompt_encoder
from library.sampling.step_conditioning import cfg_denoiser, encode_for_sampling, hires_conditioning
from library.sampling.vae_decode import decode_to_pixels

StepCallback = Callable[[int], None]


@dataclass(frozen=True)
class SampleRequest:
    """What to generate. `loras` are (file path, weight) applied besides any `<lora:...>` tags."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 30
    cfg_scale: float = 7.0
    guidance_rescale: float = 0.0  # CFG rescale φ (Lin et al. 2023), 0 = off; 0.7 is the paper's value
    sampler: str = "Euler a"
    width: int = 512
    height: int = 512
    seed: int = -1
    batch_size: int = 1
    batch_count: int = 1
    clip_skip: int = 1
    loras: tuple[tuple[str, float], ...] = ()
    lora_dir: str | None = None
    wildcards_dir: str | None = None
    denoising_strength: float = 0.75  # img2img only: how much of the schedule re-draws the init image
    models_dir: str | None = None  # where <checkpoint:NAME> tags find their model file
    embeddings_dir: str | None = None  # textual-inversion embeddings, used by file name in prompts
    # hires fix (A1111 txt2img): first pass at width x height, upscale, img2img pass at denoising_strength
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"  # a Latent mode, "Lanczos", or an upscaler model file
    hr_second_pass_steps: int = 0  # 0 = same as steps
    hr_resize_x: int = 0
    hr_resize_y: int = 0


@dataclass
class ImageJob:
    """One image to make: its own seed, final prompt texts and LoRAs."""

    seed: int
    prompt: str
    negative_prompt: str
    text: str
    negative_text: str
    loras: tuple[tuple[str, float], ...]
    lora_names: tuple[tuple[str, str], ...] = ()  # (name, path) for the Lora hashes field
    # the request with this image's settings tags (<cfg_scale:5>, <steps:20> ...) applied; None: the batch's own
    request: SampleRequest | None = None
    checkpoint: str | None = None  # <checkpoint:NAME> / <vae:NAME>: must name what is loaded
    vae: str | None = None


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    prompt: str
    negative_prompt: str
    parameters: str
    request: SampleRequest = field(repr=False)


def validate_request(request: SampleRequest) -> None:
    """Every problem with a request at once, before any model work."""
    problems = []
    if request.width % 8 or request.height % 8 or request.width < 8 or request.height < 8:
        problems.append(f"width/height {request.width}x{request.height}: both must be multiples of 8 (e.g. 512x768)")
    if request.steps < 1:
        problems.append(f"steps {request.steps}: use at least 1")
    if request.batch_size < 1 or request.batch_count < 1:
        problems.append(f"batch_size {request.batch_size} / batch_count {request.batch_count}: use at least 1")
    if not 0.0 < request.denoising_strength <= 1.0:
        problems.append(f"denoising_strength {request.denoising_strength}: use a value in (0, 1] "
                        "(1 re-draws everything)")
    if request.clip_skip < 1:
        problems.append(f"clip_skip {request.clip_skip}: use 1 (none) or more")
    if not 0.0 <= request.guidance_rescale <= 1.0:
        problems.append(f"guidance_rescale {request.guidance_rescale}: use a value in [0, 1] (0 = off, 0.7 is the paper's)")
    try:
        resolve_sampler(request.sampler)
    except SamplingError as exc:
        problems.append(exc.summary + " (" + "; ".join(exc.problems) + ")")
    if problems:
        raise SamplingError("cannot sample with these settings", problems)


def plan_jobs(request: SampleRequest) -> tuple[int, list[ImageJob]]:
    """(base seed, one job per image): seeds, expanded prompts, LoRA and settings tags resolved.

    Dynamic prompts are expanded first, then tags are read, so `{<cfg_scale:5>|<cfg_scale:7>}`
    varies per image; `<seed:N>` sets that image's noise seed (its prompt choices stay seed + i).
    """
    seed = request.seed if request.seed is not None and request.seed >= 0 else random.randrange(2**32)
    jobs = []
    for i in range(request.batch_size * request.batch_count):
        s = seed + i
        prompt = expand_prompt(request.prompt, s, request.wildcards_dir)
        negative = expand_prompt(request.negative_prompt, s, request.wildcards_dir)
        negative_text, _neg_tags, neg_settings = extract_prompt_tags(negative)
        text, tags, settings = extract_prompt_tags(prompt)
        settings = neg_settings | settings
        image_request = _apply_settings(request, settings, prompt)
        image_seed = settings.pop("seed", s)
        if image_seed < 0:  # <seed:-1> is "random", as in A1111
            image_seed = random.randrange(2**32)
        tagged = [(str(resolve_lora(t.name, request.lora_dir)), t.weight, t.name) for t in tags]
        explicit = [(str(p), float(w), _lora_name(p)) for p, w in request.loras]
        shown = prompt + "".join(f" <lora:{name}:{format_number(w)}>" for _p, w, name in explicit)
        all_loras = explicit + tagged
        jobs.append(ImageJob(image_seed, shown, negative, text, negative_text,
                             tuple((p, w) for p, w, _ in all_loras),
                             tuple((name, p) for p, w, name in all_loras if w != 0),
                             request=image_request, checkpoint=_checkpoint(settings, request.models_dir),
                             vae=settings.get("vae")))
    return seed, jobs


def _checkpoint(settings: dict[str, object], models_dir: str | None) -> str | None:
    """A `<checkpoint:NAME>` tag as a file in models_dir; without models_dir it must name the loaded model."""
    name = settings.get("checkpoint")
    if name is None or models_dir is None:
        return name
    return str(resolve_named_file("checkpoint", str(name), models_dir, MODEL_EXTENSIONS, "--models_dir"))


def _apply_settings(request: SampleRequest, settings: dict[str, object], prompt: str) -> SampleRequest | None:
    """The request with a prompt's settings tags applied, checked like the request itself."""
    changes = {k: v for k, v in settings.items() if k not in ("seed", "checkpoint", "vae")}
    if not changes:
        return None  # the batch's own request: grids keep batching cells whose prompts differ
    changed = dataclasses.replace(request, **changes)
    try:
        validate_request(changed)
    except SamplingError as exc:
        raise SamplingError(f"prompt {prompt!r}: its settings tags give values that cannot be used",
                            exc.problems) from None
    return changed


def check_model_tags(bundle, jobs: Sequence[ImageJob]) -> None:
    """`<checkpoint:NAME>` / `<vae:NAME>` must name the loaded model / VAE (switching per image is not supported)."""
    facts = bundle.facts
    for kind, loaded in (("checkpoint", facts.name), ("vae", getattr(facts, "vae_name", None))):
        for job in jobs:
            wanted = getattr(job, kind)
            if wanted is None or (loaded and model_label(Path(wanted).name) == model_label(Path(loaded).name)):
                continue
            flag = "--pretrained_model_name_or_path" if kind == "checkpoint" else "--vae"
            how = ("`lorasmith sample --models_dir FOLDER` switches checkpoints per image; here "
                   if kind == "checkpoint" else "VAEs are not switched per image: ")
            raise SamplingError(
                f"prompt tag <{kind}:{wanted}>: the loaded {kind} is {loaded or 'the one inside the model'}",
                [f"{how}load {wanted} with {flag}, or remove the tag (a grid's Checkpoint axis compares checkpoints)"])


def _lora_name(path: str) -> str:
    return Path(path).stem


class SamplingSession:
    """A bundle plus what is worth keeping between generations: prompt cache and applied LoRAs."""

    def __init__(self, bundle) -> None:
        self.bundle = bundle
        self.encoder = make_prompt_encoder(bundle)  # SD1, SD2 (OpenCLIP padding) or SDXL (two encoders)
        self.loras = LoraStack.for_bundle(bundle)
        self.denoiser = DiscreteDenoiser(bundle.unet, sampling_scheduler_config(bundle))  # + a file's ztsnr
        if next(bundle.unet.parameters()).device.type == "cpu":
            # the trainer's CPU choice (library/training/conv_path.py): small convolutions take the
            # direct im2col+GEMM kernel instead of oneDNN; bench/grid_speed.py --compare_conv_path
            from library.training.conv_path import install_small_conv_path

            install_small_conv_path(bundle.unet)

    def generate(self, request: SampleRequest, on_step: StepCallback | None = None,
                 max_batch: int | None = None) -> list[GeneratedImage]:
        """All images of a request; batches of batch_size (or max_batch) that share their LoRAs."""
        validate_request(request)
        _seed, jobs = plan_jobs(request)
        return self.run_jobs(request, jobs, on_step, max_batch or request.batch_size)

    def run_jobs(self, request: SampleRequest, jobs: Sequence[ImageJob], on_step: StepCallback | None = None,
                 max_batch: int = 1, init_images: Sequence[Image.Image] | None = None,
                 on_batch: Callable[[list[GeneratedImage]], None] | None = None) -> list[GeneratedImage]:
        """Jobs sharing a request's settings; consecutive jobs with equal LoRAs run as one batch.

        With `init_images` (one per job) this is img2img at `request.denoising_strength`.
        `on_batch` receives each batch's images as soon as they are decoded (to save them then).
        """
        if init_images is not None and len(init_images) != len(jobs):
            raise SamplingError("img2img needs one init image per image to make",
                                [f"{len(init_images)} init images for {len(jobs)} images"])
        check_model_tags(self.bundle, jobs)
        self._use_embeddings(request.embeddings_dir)
        out: list[GeneratedImage] = []
        i = 0
        while i < len(jobs):
            j = i + 1
            while j < len(jobs) and j - i < max_batch and jobs[j].loras == jobs[i].loras \
                    and jobs[j].request == jobs[i].request:
                j += 1
            batch_request = jobs[i].request or request  # settings tags make a per-image request
            made = self._run_batch(batch_request, list(jobs[i:j]), on_step, init_images[i:j] if init_images else None)
            if on_batch is not None:
                on_batch(made)
            out += made
            i = j
        return out

    @torch.no_grad()
    def _run_batch(self, request: SampleRequest, jobs: list[ImageJob], on_step: StepCallback | None,
                   init_images: Sequence[Image.Image] | None = None) -> list[GeneratedImage]:
        if self.loras.activate(jobs[0].loras):
            self.encoder.clear()
        clip_skip = request.clip_skip if request.clip_skip > 1 else None
        # prompt editing / alternation: per-step conditioning (library/sampling/step_conditioning.py)
        cond, uncond = encode_for_sampling(self.encoder, [j.text for j in jobs], [j.negative_text for j in jobs],
                                           clip_skip, request.sampler, request.steps)
        init = encode_images(self.bundle.vae, init_images, request.width, request.height) if init_images else None
        latents = sample_latents(self.denoiser, request, [j.seed for j in jobs], cond, uncond, on_step, init)
        hires = request.enable_hr and init is None
        if hires:
            latents = self._hires_pass(request, [j.seed for j in jobs], latents, cond, uncond, on_step)
        images = decode_latents(self.bundle.vae, latents)
        return [GeneratedImage(img, job.seed, job.prompt, job.negative_prompt,
                               self.infotext(request, job, img2img=init is not None, hires=hires), request)
                for img, job in zip(images, jobs)]

    def _hires_pass(self, request: SampleRequest, seeds: Sequence[int], latents: torch.Tensor, cond: torch.Tensor,
                    uncond: torch.Tensor, on_step: StepCallback | None) -> torch.Tensor:
        """A1111's sample_hr_pass: upscale the first pass, crop whole cells, img2img with fixed steps."""
        from library.sampling.hires import LATENT_UPSCALERS, hires_target, second_pass_steps

        target = hires_target(request.width, request.height, request.hr_scale, request.hr_resize_x,
                              request.hr_resize_y)
        total, run = second_pass_steps(request.steps, request.hr_second_pass_steps, request.denoising_strength)
        (to_w, to_h), (tx, ty) = target.upscale_to, target.truncate
        if request.hr_upscaler in LATENT_UPSCALERS:
            mode, antialias = LATENT_UPSCALERS[request.hr_upscaler]
            latents = torch.nn.functional.interpolate(latents, size=(to_h // 8, to_w // 8), mode=mode,
                                                      antialias=antialias)
        else:
            images = [upscale_image(im, request.hr_upscaler, to_w, to_h, request.models_dir)
                      for im in decode_latents(self.bundle.vae, latents)]
            latents = encode_images(self.bundle.vae, images, to_w, to_h)
        latents = latents[:, :, ty // 2:latents.shape[2] - (ty + 1) // 2, tx // 2:latents.shape[3] - (tx + 1) // 2]
        if run == 0:
            return latents
        second = dataclasses.replace(request, width=latents.shape[3] * 8, height=latents.shape[2] * 8, steps=total)
        cond, uncond = hires_conditioning(cond, uncond, request.sampler, request.steps, request.hr_second_pass_steps)
        return sample_latents(self.denoiser, second, seeds, cond, uncond, on_step, latents, fixed_steps=run)

    def _sdxl(self) -> bool:
        return getattr(self.bundle, "text_encoder_2", None) is not None

    def infotext(self, request: SampleRequest, job: ImageJob, img2img: bool = False, hires: bool = False) -> str:
        facts = self.bundle.facts
        spec = resolve_sampler(request.sampler)
        lora_hashes = ", ".join(f"{name}: {lora_short_hash(path)}" for name, path in job.lora_names)
        sampler, schedule_type = infotext_sampler(spec)
        params = {
            "Steps": request.steps, "Sampler": sampler, "Schedule type": schedule_type,
            "CFG scale": format_number(request.cfg_scale), "Seed": job.seed,
            "Size": f"{request.width}x{request.height}",
            "Model hash": (facts.model_hash or "")[:10] or None, "Model": model_label(facts.name),
            # A1111 writes a separately loaded VAE as its file's short hash and name without extension
            "VAE hash": (facts.vae_hash or "")[:10] or None if facts.vae_name else None,
            "VAE": model_label(facts.vae_name) if facts.vae_name else None,
            "Denoising strength": format_number(request.denoising_strength) if img2img else None,
            # SDXL ignores clip skip (as A1111 does unless sdxl_clip_l_skip is set): not written for it
            "Clip skip": request.clip_skip if request.clip_skip > 1 and not self._sdxl() else None,
            **(hires_fields(request) if hires else {}),
            "RNG": "CPU",  # sample_latents draws every noise tensor on the CPU
            # A1111's field for a zero-terminal-SNR schedule (from the model's rescale_betas_zero_snr)
            "Noise Schedule": "Zero Terminal SNR" if self.denoiser.scheduler_config.get("rescale_betas_zero_snr")
            else None,
            # the CFG Rescale extension's field (an extra parameter: after A1111's own ones)
            "CFG Rescale": format_number(request.guidance_rescale) if request.guidance_rescale else None,
            "Lora hashes": lora_hashes or None, "TI hashes": self.ti_hashes(job), "Version": version_string(),
        }
        return format_infotext(job.prompt, job.negative_prompt, params)

    def _use_embeddings(self, folder: str | None) -> None:
        """Textual-inversion embeddings from `folder` for the prompts of this call (None: none)."""
        from library.sampling.embeddings import embeddings_for_bundle

        use = getattr(self.encoder, "use_embeddings", None)
        if use is None:
            if folder is not None:
                raise SamplingError(f"--embeddings_dir {folder}: textual-inversion embeddings are not supported "
                                    f"with this model's prompt encoder ({type(self.encoder).__name__}) yet",
                                    ["leave --embeddings_dir out and write the prompt without embedding names"])
            return
        use(embeddings_for_bundle(self.bundle, folder))

    def ti_hashes(self, job: ImageJob) -> str | None:
        """A1111's `TI hashes` for the embeddings this image's prompt and negative prompt use."""
        db = getattr(self.encoder, "embeddings", None)
        if db is None:
            return None
        from library.sampling.embeddings import embeddings_in_text, ti_hashes

        return ti_hashes(embeddings_in_text(self.bundle.tokenizer, db, job.text),
                         embeddings_in_text(self.bundle.tokenizer, db, job.negative_text))


def hires_fields(request: SampleRequest) -> dict[str, object]:
    """A1111's hires infotext fields, numbers written as A1111 writes them (2.0 -> "2")."""
    from library.sampling.hires import hires_infotext

    fields = hires_infotext(request.hr_scale, request.hr_resize_x, request.hr_resize_y,
                            request.hr_second_pass_steps, upscaler_label(request.hr_upscaler),
                            request.denoising_strength)
    return {k: format_number(v) if isinstance(v, float) else v for k, v in fields.items()}


def upscaler_label(name: str) -> str:
    """An upscaler as infotext names it: built-in names as they are, a model file by its stem."""
    return model_label(Path(name).name) if name.lower().endswith((".pth", ".pt", ".safetensors")) else name


def upscale_image(image: Image.Image, upscaler: str, width: int, height: int, models_dir: str | None = None) -> Image.Image:
    """Pixel-space upscaling for hires fix: "Lanczos"/"None" or an upscaler model file (spandrel, tiled)."""
    from library.sampling.upscale import ModelUpscaler, lanczos_upscale

    if upscaler in ("Lanczos", "None"):
        return lanczos_upscale(image, width, height)
    path = Path(upscaler)
    if not path.is_file() and models_dir and (Path(models_dir) / upscaler).is_file():
        path = Path(models_dir) / upscaler
    if not path.is_file():
        raise SamplingError(f"--hr_upscaler {upscaler!r}: not a Latent mode, Lanczos, or an upscaler model file")
    return ModelUpscaler(path).upscale(image, width, height)


def per_image_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s) % 2**64) for s in seeds]


def img2img_sigmas(sigmas: torch.Tensor, steps: int, strength: float) -> torch.Tensor:
    """The tail of an n-step schedule that img2img runs: int(strength * n) + 1 model steps (A1111's default)."""
    t_enc = int(min(strength, 0.999) * steps)
    return sigmas[steps - t_enc - 1:]


def encode_images(vae, images: Sequence[Image.Image], width: int, height: int) -> torch.Tensor:
    """Init images → scaled latents: resized to the request's size ("Just resize"), the VAE's mean latent."""
    dtype = next(vae.parameters()).dtype
    device = next(vae.parameters()).device
    from library.data.images import to_rgb  # every mode, alpha on white (a GUI upload may be RGBA or 16-bit)

    pixels = torch.stack([
        torch.from_numpy(np.asarray(to_rgb(im)[0].resize((width, height), Image.LANCZOS), dtype=np.float32))
        for im in images]).permute(0, 3, 1, 2) / 127.5 - 1.0
    latents = vae.encode(pixels.to(device, dtype)).latent_dist.mean.float()
    return latents * float(getattr(vae.config, "scaling_factor", 0.18215))


def sample_latents(denoiser: DiscreteDenoiser, request: SampleRequest, seeds: Sequence[int], cond: torch.Tensor,
                   uncond: torch.Tensor, on_step: StepCallback | None = None,
                   init_latents: torch.Tensor | None = None, fixed_steps: int | None = None) -> torch.Tensor:
    """Run the sampler from each seed's noise; noise is drawn per image on CPU so batches don't change it.

    With `init_latents` (img2img) the noise is added to them at the first sigma of
    the schedule's tail and only that tail is sampled.
    """
    spec = resolve_sampler(request.sampler)
    unet = denoiser.unet
    device = next(unet.parameters()).device
    channels = unet.config.in_channels
    shape = (channels, request.height // 8, request.width // 8)
    gens = per_image_generators(seeds)
    noise = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)

    def noise_sampler(sigma, sigma_next):
        return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)

    sigmas = spec.sigmas(request.steps, denoiser.scheduler_config).float().to(device)
    start = noise * sigmas[0]
    if init_latents is not None:
        sigmas = (sigmas[len(sigmas) - 1 - fixed_steps:] if fixed_steps is not None  # hires: last n steps
                  else img2img_sigmas(sigmas, request.steps, request.denoising_strength))
        start = init_latents.to(device) + noise * sigmas[0]
    model = cfg_denoiser(denoiser, cond, uncond, request.cfg_scale, request.guidance_rescale, device)
    callback = (lambda info: on_step(len(seeds))) if on_step else None
    return spec.fn(model, start, sigmas, noise_sampler=noise_sampler, callback=callback)


def decode_latents(vae, latents: torch.Tensor) -> list[Image.Image]:
    """VAE decode (latents / scaling_factor) → 8-bit RGB images; an fp16 NaN decode is redone in fp32."""
    pixels, _retried = decode_to_pixels(vae, latents)
    arr = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def generate(bundle, request: SampleRequest, on_step: StepCallback | None = None) -> list[GeneratedImage]:
    """Generate a request's images with a fresh session; LoRAs are removed again afterwards."""
    session = SamplingSession(bundle)
    try:
        return session.generate(request, on_step)
    finally:
        session.loras.clear()


def with_changes(request: SampleRequest, **changes) -> SampleRequest:
    return dataclasses.replace(request, **changes)
