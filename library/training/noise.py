"""Noise and timesteps for one training step, as sd-scripts draws them.

Every function takes an explicit `torch.Generator`, so the whole trajectory of
a run is a function of the seed and the generator states, which a saved state
can restore exactly (resume). Nothing here touches the global RNG.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class NoiseSettings:
    """The noise-related options of a run (TrainConfig names)."""

    noise_offset: float | None = None
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int | None = None
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float | None = None
    ip_noise_gamma_random_strength: bool = False
    min_timestep: int | None = None
    max_timestep: int | None = None

    @classmethod
    def from_config(cls, cfg: object) -> "NoiseSettings":
        return cls(**{name: getattr(cfg, name) for name in cls.__dataclass_fields__})


def randn(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn from `gen`, on `like`'s device and dtype."""
    return torch.randn(shape, generator=gen, device=gen.device, dtype=torch.float32).to(like.device, like.dtype)


def rand_scalar(gen: torch.Generator) -> float:
    """One uniform draw in [0, 1) from `gen` as a Python number: on a GPU the host waits for it.

    Only pyramid noise uses it (its scale factors set tensor sizes).
    """
    return float(torch.rand((1,), generator=gen, device=gen.device).item())


def rand_factor(gen: torch.Generator) -> torch.Tensor:
    """One uniform draw in [0, 1) from `gen`, left on its device: a factor with no host round trip."""
    return torch.rand((1,), generator=gen, device=gen.device)


def sample_timesteps(batch: int, low: int, high: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Timesteps uniform in [low, high) (DDPM, Ho et al. 2020, Alg. 1), one per sample."""
    t = torch.randint(low, high, (batch,), generator=gen, device=gen.device)
    return t.to(device=device, dtype=torch.long)


def offset_noise(latents: torch.Tensor, noise: torch.Tensor, offset: float | torch.Tensor,
                 gen: torch.Generator, adaptive_scale: float | None = None) -> torch.Tensor:
    """Noise offset (Guttenberg 2023, "Diffusion with Offset Noise"): noise + offset·randn(B, C, 1, 1).

    With `adaptive_scale`, the offset grows by scale·|mean of each latent channel|
    (sd-scripts' adaptive noise scale) and is clamped at zero.
    """
    if adaptive_scale is not None:
        channel_mean = latents.mean(dim=(2, 3), keepdim=True).abs()
        offset = torch.clamp(offset + adaptive_scale * channel_mean, min=0.0)
    b, c = latents.shape[:2]
    return noise + offset * randn((b, c, 1, 1), gen, latents)


def pyramid_noise(noise: torch.Tensor, gen: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution (pyramid) noise (Whitaker 2023, "Multi-Resolution Noise for Diffusion Model Training").

    Adds upsampled noise at random scale factors r in [2, 4) per level, weighted
    discount**i, then renormalises to unit standard deviation.
    """
    b, c, h, w = noise.shape
    out = noise.clone()
    for i in range(iterations):
        r = rand_scalar(gen) * 2 + 2
        hn, wn = max(1, int(h / (r ** i))), max(1, int(w / (r ** i)))
        low = randn((b, c, hn, wn), gen, noise)
        out = out + F.interpolate(low.float(), size=(h, w), mode="bilinear").to(noise.dtype) * discount ** i
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def make_noise(latents: torch.Tensor, settings: NoiseSettings, gen: torch.Generator) -> torch.Tensor:
    """The noise target ε for a batch: Gaussian, then offset and pyramid noise when enabled."""
    noise = randn(tuple(latents.shape), gen, latents)
    if settings.noise_offset:
        offset: float | torch.Tensor = settings.noise_offset
        if settings.noise_offset_random_strength:
            offset = rand_factor(gen) * settings.noise_offset
        noise = offset_noise(latents, noise, offset, gen, settings.adaptive_noise_scale)
    if settings.multires_noise_iterations:
        noise = pyramid_noise(noise, gen, settings.multires_noise_iterations, settings.multires_noise_discount)
    return noise


def input_perturbation(noise: torch.Tensor, settings: NoiseSettings, gen: torch.Generator) -> torch.Tensor:
    """Input perturbation (Ning et al. 2023, "Input Perturbation Reduces Exposure Bias"): ε + γ·ξ.

    Only the noise used to make the noisy latents is perturbed; the loss target stays ε.
    """
    if not settings.ip_noise_gamma:
        return noise
    gamma = settings.ip_noise_gamma
    if settings.ip_noise_gamma_random_strength:
        gamma = rand_factor(gen) * gamma
    return noise + gamma * randn(tuple(noise.shape), gen, noise)


def add_noise(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Forward diffusion q(x_t | x_0) (Ho et al. 2020, eq. 4): √ᾱ_t·x0 + √(1−ᾱ_t)·ε."""
    ac = alphas_cumprod.to(latents.device)[timesteps].float()
    shape = (-1,) + (1,) * (latents.dim() - 1)
    sqrt_ac = ac.sqrt().view(shape)
    sqrt_1m = (1.0 - ac).sqrt().view(shape)
    return (sqrt_ac * latents.float() + sqrt_1m * noise.float()).to(latents.dtype)


def velocity(latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
             alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """v-prediction target (Salimans & Ho 2022, "Progressive Distillation"): √ᾱ·ε − √(1−ᾱ)·x0."""
    ac = alphas_cumprod.to(latents.device)[timesteps].float()
    shape = (-1,) + (1,) * (latents.dim() - 1)
    return (ac.sqrt().view(shape) * noise.float() - (1.0 - ac).sqrt().view(shape) * latents.float()).to(latents.dtype)


def zero_terminal_snr_betas(betas: torch.Tensor) -> torch.Tensor:
    """Rescaled betas with ᾱ_T = 0 (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1).

    √ᾱ is shifted so its last value is 0 and scaled so its first stays as it was;
    betas are then read back from the ratios of consecutive ᾱ (sd-scripts'
    fix_noise_scheduler_betas_for_zero_terminal_snr). Computed in float64.
    """
    sqrt_ab = torch.cumprod(1.0 - betas.double(), dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    ab = sqrt_ab ** 2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return (1.0 - alphas).to(betas.dtype)


@dataclass
class NoisedBatch:
    noise: torch.Tensor
    noisy_latents: torch.Tensor
    timesteps: torch.Tensor


def timestep_range(settings: NoiseSettings, num_train: int) -> tuple[int, int]:
    """[low, high) of the timesteps training draws from: min_timestep/max_timestep or the whole schedule."""
    low = 0 if settings.min_timestep is None else settings.min_timestep
    high = num_train if settings.max_timestep is None else settings.max_timestep
    return low, high


def noise_batch(latents: torch.Tensor, settings: NoiseSettings, gen: torch.Generator,
                alphas_cumprod: torch.Tensor, timestep: int | None = None) -> NoisedBatch:
    """Everything random about one step, in sd-scripts' order: noise, timesteps, perturbation.

    With `timestep`, every sample gets that timestep and none is drawn (validation, as
    sd-scripts sets min_timestep = max_timestep = t for each validation timestep).
    """
    noise = make_noise(latents, settings, gen)
    if timestep is None:
        low, high = timestep_range(settings, int(alphas_cumprod.shape[0]))
        timesteps = sample_timesteps(latents.shape[0], low, high, gen, latents.device)
    else:
        timesteps = torch.full((latents.shape[0],), int(timestep), dtype=torch.long, device=latents.device)
    noisy = add_noise(latents, input_perturbation(noise, settings, gen), timesteps, alphas_cumprod)
    return NoisedBatch(noise=noise, noisy_latents=noisy, timesteps=timesteps)
