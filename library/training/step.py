"""One training step's forward pass and loss: latents, conditioning, noise, prediction, weighted loss."""
from __future__ import annotations

from typing import Any

import torch

from library.data.text import encode_tokens
from library.data.text_conditioning import Conditioning, TextEncoding, sdxl_time_ids
from library.training.loss import (
    huber_threshold,
    per_sample_loss,
    snr_from_alphas,
    weighted_batch_loss,
)
from library.training.noise import NoiseSettings, noise_batch, velocity


class StepMath:
    """The per-run constants of the loss: noise settings, SNR table, loss type."""

    def __init__(self, parts: Any) -> None:
        cfg = parts.config
        self.parts = parts
        self.noise = NoiseSettings.from_config(cfg)
        weighted = (cfg.min_snr_gamma or cfg.debiased_estimation_loss or cfg.scale_v_pred_loss_like_noise_pred
                    or cfg.v_pred_like_loss)
        self.snr = snr_table(parts) if weighted else None
        self.scaling = float(getattr(parts.bundle.vae.config, "scaling_factor", 0.18215))
        self.memory_format = torch.channels_last if cfg.unet_channels_last else torch.preserve_format
        self.encoding = TextEncoding(parts.bundle, cfg.clip_skip, cfg.max_token_length)

    def latents(self, batch: dict[str, Any], gen: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of the batch: cached ones, or the VAE's sample drawn from the run's generator."""
        p = self.parts
        if batch.get("latents") is not None:
            lat = batch["latents"].to(p.device, torch.float32, non_blocking=True)  # no-op when cached on the GPU
        else:
            with torch.no_grad():
                pixels = batch["images"].to(p.device, p.bundle.vae.dtype, non_blocking=True)
                lat = p.bundle.vae.encode(pixels).latent_dist.sample(generator=gen or p.rng.noise).float()
        lat = torch.nan_to_num(lat, 0.0)  # sd-scripts replaces NaN latents with zeros
        return lat * self.scaling

    def conditioning(self, batch: dict[str, Any]) -> Conditioning:
        """Text conditioning of the batch: cached outputs, or the text encoder(s) run now (library.data.text_conditioning)."""
        p = self.parts
        if batch.get("text_encoder_outputs") is not None:
            return Conditioning(batch["text_encoder_outputs"].to(p.device, p.weight_dtype, non_blocking=True))
        cache = getattr(p, "text_cache", None)
        if cache is not None and cache.covers(batch["captions"]):
            return cache.lookup(batch["captions"], p.device, p.weight_dtype)
        with torch.set_grad_enabled(p.train_text_encoder and torch.is_grad_enabled()), p.accelerator.autocast():
            if self.encoding.sdxl:
                ids = batch.get("input_ids")
                return self.encoding.encode(None if ids is None else ids.to(p.device, non_blocking=True), batch["captions"])
            return Conditioning(encode_tokens(p.bundle.text_encoder, batch["input_ids"].to(p.device, non_blocking=True),
                                              p.config.clip_skip))

    def added_conditioning(self, batch: dict[str, Any], cond: Conditioning) -> dict[str, torch.Tensor] | None:
        """SDXL's `added_cond_kwargs`: pooled text and each image's size/crop ids; None for SD1/SD2."""
        if cond.pooled is None:
            return None
        p = self.parts
        time_ids = sdxl_time_ids(batch["original_sizes"], batch["bucket"], batch["flipped"])
        return {"text_embeds": cond.pooled.to(p.weight_dtype),
                "time_ids": time_ids.to(p.device, p.weight_dtype, non_blocking=True)}

    def loss(self, batch: dict[str, Any], timestep: int | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
        """The step loss (sd-scripts train_network.py): per-sample mean over C,H,W, weighted, batch mean.

        Validation passes a fixed `timestep` and its own generator `gen`; training draws both from the run's RNG.
        """
        p, cfg = self.parts, self.parts.config
        gen = gen or p.rng.noise
        latents = self.latents(batch, gen)
        cond = self.conditioning(batch)
        added = self.added_conditioning(batch, cond)
        nb = noise_batch(latents, self.noise, gen, p.alphas_cumprod, timestep)
        with p.accelerator.autocast():
            unet = p.unet_step if p.unet_step is not None else p.bundle.unet
            noisy = nb.noisy_latents.to(p.weight_dtype, memory_format=self.memory_format)
            extra = {} if added is None else {"added_cond_kwargs": added}
            pred = unet(noisy, nb.timesteps, cond.hidden.to(p.weight_dtype), **extra).sample
        target = velocity(latents, nb.noise, nb.timesteps, p.alphas_cumprod) if p.v_prediction else nb.noise
        delta = None
        if cfg.loss_type in ("huber", "smooth_l1"):
            delta = huber_threshold(nb.timesteps, p.alphas_cumprod, cfg.huber_c, cfg.huber_schedule,
                                    int(p.alphas_cumprod.shape[0]))
        per = per_sample_loss(pred, target, cfg.loss_type, delta, batch.get("masks"))
        weights = batch["loss_weights"].to(p.device, non_blocking=True)
        return weighted_batch_loss(per, weights, nb.timesteps, self.snr, cfg.min_snr_gamma,
                                   p.v_prediction, cfg.debiased_estimation_loss,
                                   cfg.scale_v_pred_loss_like_noise_pred, cfg.v_pred_like_loss)


def snr_table(parts: Any) -> torch.Tensor:
    """SNR(t) for the loss weights, from the model's own schedule even with --zero_terminal_snr.

    sd-scripts computes its SNR table before it rescales the betas, so the weights never see
    the terminal SNR of 0 (which would make the ε min-SNR weight 0/0); the noise and the
    target do use the rescaled ᾱ.
    """
    from library.models import make_noise_scheduler

    return snr_from_alphas(make_noise_scheduler(parts.bundle).alphas_cumprod.to(parts.alphas_cumprod.device))
