"""Noise-level (sigma) schedules as pure functions.

Sigmas follow k-diffusion's convention (Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models"): a latent at noise level
sigma is ``x0 + sigma * eps``; every schedule is a descending 1-D float tensor
ending in the final level (0 for a fully denoised image).

A discrete-time model (SD 1.x, 1000 training timesteps) only knows the sigmas
of its training timesteps; `sigma_to_t` / `t_to_sigma` interpolate between them
in log-sigma, as k-diffusion's DiscreteSchedule does, so that any sigma maps
to a (fractional) UNet timestep.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from library.errors import SamplingError


def betas_from_config(config: Mapping[str, Any]) -> torch.Tensor:
    """Training betas from a diffusers scheduler config (linear / scaled_linear / given)."""
    n = int(config.get("num_train_timesteps", 1000))
    trained = config.get("trained_betas")
    if trained is not None:
        return torch.tensor(trained, dtype=torch.float64)
    start = float(config.get("beta_start", 0.00085))
    end = float(config.get("beta_end", 0.012))
    kind = config.get("beta_schedule", "scaled_linear")
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    raise SamplingError(
        f"scheduler config: beta_schedule {kind!r} is not supported",
        ["use 'scaled_linear' (SD 1.x) or 'linear', or give trained_betas"],
    )


# A1111's and ComfyUI's stand-in for the terminal ᾱ = 0 of a zero-terminal-SNR schedule (σ would be ∞)
ZERO_SNR_TERMINAL_ABAR = 4.8973451890853435e-08


def rescale_zero_terminal_snr_abar(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", algorithm 1.

    Shift √ᾱ so the last is 0 and scale it so the first is unchanged; the last ᾱ is then set to
    A1111's / ComfyUI's 4.897e-08 so σ stays finite (diffusers' Euler uses 2**-24 instead).
    """
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    abar = ((root - last) * (first / (first - last))) ** 2
    abar[-1] = ZERO_SNR_TERMINAL_ABAR
    return abar


def sampling_scheduler_config(bundle) -> dict[str, Any]:
    """The bundle's scheduler config, with `rescale_betas_zero_snr` set when its file says zero terminal SNR.

    A single file marks it with a `ztsnr` key beside `v_pred` (NoobAI-XL v-pred and other zsnr
    checkpoints); ComfyUI samples such a model on the zero-terminal-SNR schedule, and so do we.
    """
    config = dict(bundle.scheduler_config)
    extras = getattr(bundle, "ldm_extras", None) or {}
    if "ztsnr" in extras and "v_pred" in extras:
        config["rescale_betas_zero_snr"] = True
    return config


def model_sigmas(config: Mapping[str, Any]) -> torch.Tensor:
    """Sigma of every training timestep, ascending: sqrt((1 - abar) / abar) (DDPM, Ho et al. 2020).

    A config with diffusers' `rescale_betas_zero_snr: true` gets the zero-terminal-SNR schedule.
    """
    alphas_cumprod = torch.cumprod(1.0 - betas_from_config(config), dim=0)
    if config.get("rescale_betas_zero_snr"):
        alphas_cumprod = rescale_zero_terminal_snr_abar(alphas_cumprod)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def sigma_to_t(sigma: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional timestep of `sigma`, interpolating linearly in log-sigma (k-diffusion DiscreteSchedule)."""
    log_sigma = sigma.to(log_sigmas.dtype).clamp_min(1e-10).log()
    dists = log_sigma - log_sigmas[:, None]
    low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = ((low - log_sigma) / (low - high)).clamp(0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.view(sigma.shape)


def t_to_sigma(t: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """Sigma at fractional timestep `t`, interpolating linearly in log-sigma."""
    t = t.to(log_sigmas.dtype)
    low_idx = t.floor().long().clamp(0, log_sigmas.shape[0] - 1)
    high_idx = t.ceil().long().clamp(0, log_sigmas.shape[0] - 1)
    w = t.frac()
    return ((1 - w) * log_sigmas[low_idx] + w * log_sigmas[high_idx]).exp()


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def get_sigmas_discrete(n: int, config: Mapping[str, Any]) -> torch.Tensor:
    """A1111's default ("Automatic") schedule: n timesteps evenly spaced from T-1 to 0, then 0."""
    _check_steps(n)
    log_sigmas = model_sigmas(config).log()
    t = torch.linspace(log_sigmas.shape[0] - 1, 0, n, dtype=torch.float64)
    return append_zero(t_to_sigma(t, log_sigmas))


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, then 0."""
    _check_steps(n)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def get_sigmas_karras_for_model(n: int, config: Mapping[str, Any]) -> torch.Tensor:
    """Karras schedule between the model's own smallest and largest sigma (as A1111 does)."""
    sigmas = model_sigmas(config)
    return get_sigmas_karras(n, float(sigmas[0]), float(sigmas[-1]))


def get_sigmas_leading(n: int, config: Mapping[str, Any]) -> torch.Tensor:
    """DDIM's "leading" spacing (Song et al. 2021): t = i * (T // n) + steps_offset, descending, then 0."""
    _check_steps(n)
    total = int(config.get("num_train_timesteps", 1000))
    offset = int(config.get("steps_offset", 0))
    step = total // n
    t = (torch.arange(n - 1, -1, -1, dtype=torch.float64) * step + offset).clamp(max=total - 1)
    return append_zero(model_sigmas(config)[t.long()])


def discard_next_to_last(sigmas: torch.Tensor) -> torch.Tensor:
    """Drop the second-to-last sigma: DPM2 samplers spend their last step on it otherwise (k-diffusion)."""
    return torch.cat([sigmas[:-2], sigmas[-1:]])


SCHEDULES = {
    "discrete": get_sigmas_discrete,
    "karras": get_sigmas_karras_for_model,
    "leading": get_sigmas_leading,
}


def get_sigmas(kind: str, n: int, config: Mapping[str, Any]) -> torch.Tensor:
    """Schedule `kind` ('discrete', 'karras', 'leading') with n steps for a model's scheduler config."""
    try:
        fn = SCHEDULES[kind]
    except KeyError:
        raise SamplingError(f"unknown sigma schedule {kind!r}", [f"choose one of {', '.join(SCHEDULES)}"]) from None
    return fn(n, config)


def _check_steps(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise SamplingError(f"steps must be a whole number ≥ 1, got {n!r}")


__all__ = [
    "append_zero", "betas_from_config", "discard_next_to_last", "get_sigmas", "get_sigmas_discrete",
    "get_sigmas_karras", "get_sigmas_karras_for_model", "get_sigmas_leading", "model_sigmas",
    "sigma_to_t", "t_to_sigma",
]
