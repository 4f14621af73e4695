"""Measure what a tiny-world model draws: sample with the bundled sampler, label with the world classifier.

Shared by the learning tests (did the LoRA teach the star? does the base model
draw "a red circle"?) and `bench/eval_tiny_world.py` (prompt-following of a
rebuilt base model), so both judge images the same way.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from library.world.classifier import WorldClassifier, predict

DEFAULT_STEPS = 20
DEFAULT_CFG = 5.0


def sample_images(bundle, prompts: Sequence[str], seeds: Sequence[int], *,
                  loras: tuple[tuple[str, float], ...] = (), steps: int = DEFAULT_STEPS, cfg: float = DEFAULT_CFG,
                  sampler: str = "Euler a", size: int = 64, batch: int = 16,
                  init_images: np.ndarray | None = None, strength: float = 0.75) -> np.ndarray:
    """One image per (prompt, seed) pair through library.sampling; uint8 [N, size, size, 3].

    With `init_images` (uint8 [N, H, W, 3]) it is img2img at `strength`: the layout
    comes from the init image and the model re-draws the detail.
    """
    from PIL import Image

    from library.sampling.pipeline import ImageJob, SampleRequest, SamplingSession

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    request = SampleRequest(prompt=prompts[0], steps=steps, cfg_scale=cfg, sampler=sampler, width=size,
                            height=size, loras=loras, denoising_strength=strength)
    inits = [Image.fromarray(np.asarray(a)) for a in init_images] if init_images is not None else None
    jobs = [ImageJob(seed=int(s), prompt=p, negative_prompt="", text=p, negative_text="", loras=loras)
            for p, s in zip(prompts, seeds)]
    session = SamplingSession(bundle)
    try:
        made = session.run_jobs(request, jobs, max_batch=batch, init_images=inits)
    finally:
        session.loras.clear()
    return np.stack([np.asarray(g.image.convert("RGB")) for g in made])


def label_rate(classifier: WorldClassifier, images: np.ndarray, **wanted: str) -> float:
    """Fraction of images whose predicted labels equal every given one, e.g. shape="star", colour="red"."""
    pred = predict(classifier, images)
    ok = np.ones(len(images), dtype=bool)
    for head, value in wanted.items():
        ok &= np.array([p == value for p in pred[head]])
    return float(ok.mean())


@torch.no_grad()
def denoising_loss(bundle, images_uint8: np.ndarray, prompt: str, *, loras: tuple[tuple[str, float], ...] = (),
                   repeats: int = 16, seed: int = 0) -> float:
    """ε-prediction MSE on these images at fixed noise and uniform timesteps (the training objective, unweighted).

    The same seed gives the same noise and timesteps for every LoRA setting, so two
    values differ only by what the LoRA changed; a LoRA that learned its images lowers it.
    """
    from diffusers import DDPMScheduler

    from PIL import Image

    from library.data.text import encode_tokens, tokenize_captions
    from library.sampling.lora_stack import LoraStack
    from library.sampling.pipeline import encode_images

    images = [Image.fromarray(np.asarray(a)) for a in images_uint8]
    latents = encode_images(bundle.vae, images, images[0].width, images[0].height).repeat(repeats, 1, 1, 1)
    scheduler = DDPMScheduler.from_config(bundle.scheduler_config)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
    noisy = scheduler.add_noise(latents, noise, t)
    stack = LoraStack.for_bundle(bundle)
    try:
        stack.activate(loras)
        ids = tokenize_captions(bundle.tokenizer, [prompt])
        cond = encode_tokens(bundle.text_encoder, ids, None).expand(latents.shape[0], -1, -1)
        pred = bundle.unet(noisy, t, encoder_hidden_states=cond).sample
    finally:
        stack.clear()
    return float((pred - noise).pow(2).mean())
