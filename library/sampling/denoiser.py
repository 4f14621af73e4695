"""Turn a discrete-time UNet into the denoiser D(x, sigma) the samplers expect, with CFG.

Karras et al. 2022, table 1 ("VP" column) gives the preconditioning for a model
trained on x_t = sqrt(abar) x0 + sqrt(1 - abar) eps:
  c_in = 1 / sqrt(sigma^2 + 1), t = t(sigma) from the training schedule,
  eps-prediction:  D = x - sigma * eps
  v-prediction:    D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * v   (Salimans & Ho 2022)
Classifier-free guidance (Ho & Salimans 2022) mixes the conditional and
unconditional estimates: D = D_u + scale * (D_c - D_u). CFG rescale (Lin et al.
2023, section 3.4; diffusers' guidance_rescale) then rescales the guided model
output to the standard deviation of the conditional one.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from library.errors import SamplingError
from library.sampling.schedules import model_sigmas, sigma_to_t
from library.sampling.sdxl_conditioning import (
    SDXLCond,
    cat_conditioning,
    sdxl_unet_kwargs,
)


class DiscreteDenoiser:
    """D(x, sigma, cond) for an eps- or v-predicting diffusers UNet2DConditionModel."""

    def __init__(self, unet: torch.nn.Module, scheduler_config: Mapping[str, Any]) -> None:
        self.unet = unet
        self.scheduler_config = dict(scheduler_config)
        self.prediction_type = str(scheduler_config.get("prediction_type", "epsilon"))
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise SamplingError(
                f"scheduler config: prediction_type {self.prediction_type!r} is not supported",
                ["use 'epsilon' (SD 1.x) or 'v_prediction'"],
            )
        sigmas = model_sigmas(scheduler_config)
        self.log_sigmas = sigmas.log()
        self.sigma_min = float(sigmas[0])
        self.sigma_max = float(sigmas[-1])

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        c_in = 1 / (s**2 + 1).sqrt()
        t = sigma_to_t(sigma.detach().cpu(), self.log_sigmas).to(x.device)
        dtype = next(self.unet.parameters()).dtype
        kwargs = (sdxl_unet_kwargs(cond, x, dtype) if isinstance(cond, SDXLCond)
                  else {"encoder_hidden_states": cond.to(dtype)})
        out = self.unet((x * c_in).to(dtype), t.to(dtype), **kwargs).sample
        return denoised_from_output(x, s, out.to(x.dtype), self.prediction_type)

    def output_offset(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """o with D = o - k·(model output) for this prediction type (k > 0): x for ε, x/(σ²+1) for v."""
        if self.prediction_type == "epsilon":
            return x
        return x / (sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1))) ** 2 + 1)


def denoised_from_output(x: torch.Tensor, s: torch.Tensor, out: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """x0 estimate from the UNet output at x = x0 + σ·ε (Karras et al. 2022, table 1; v: Salimans & Ho 2022).

    ε: D = x − σ·ε; v: D = x/(σ²+1) − σ/√(σ²+1)·v (k-diffusion's CompVisVDenoiser).
    """
    if prediction_type == "epsilon":
        return x - s * out
    return x / (s**2 + 1) - s / (s**2 + 1).sqrt() * out


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """CFG rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", eq. 15-16).

    guided·std(cond)/std(guided), per image, mixed with `guided` by φ (diffusers' rescale_noise_cfg).
    """
    dims = tuple(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return phi * guided * ratio + (1.0 - phi) * guided


class CFGDenoiser:
    """Classifier-free guidance around a DiscreteDenoiser; both halves in one UNet batch."""

    def __init__(self, inner: DiscreteDenoiser, cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float,
                 guidance_rescale: float = 0.0) -> None:
        if cond.shape != uncond.shape:
            raise SamplingError(
                f"prompt and negative prompt embeddings differ in shape: {tuple(cond.shape)} vs {tuple(uncond.shape)}"
            )
        self.inner = inner
        self.cond = cond
        self.uncond = uncond
        self.cfg_scale = float(cfg_scale)
        self.guidance_rescale = float(guidance_rescale)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.cfg_scale == 1.0:
            return self.inner(x, sigma, self.cond)
        d = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), cat_conditioning([self.uncond, self.cond]))
        d_uncond, d_cond = d.chunk(2)
        guided = d_uncond + (d_cond - d_uncond) * self.cfg_scale
        if not self.guidance_rescale:
            return guided
        # rescaled in the model's output space (ε or v, as diffusers does): D = o − k·output with k > 0
        # per image, and the std ratio does not depend on k
        offset = self.inner.output_offset(x, sigma)
        return offset - rescale_guidance(offset - guided, offset - d_cond, self.guidance_rescale)
