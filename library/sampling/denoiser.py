"""Turn a discrete-time UNet into the denoiser D(x, sigma) the samplers expect, with CFG.

Karras et al. 2022, table 1 ("VP" column) gives the preconditioning for a model
trained on x_t = sqrt(abar) x0 + sqrt(1 - abar) eps:
  c_in = 1 / sqrt(sigma^2 + 1), t = t(sigma) from the training schedule,
  eps-prediction:  D = x - sigma * eps
  v-prediction:    D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * v   (Salimans & Ho 2022)
Classifier-free guidance (Ho & Salimans 2022) mixes the conditional and
unconditional estimates: D = D_u + scale * (D_c - D_u).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from library.errors import SamplingError
from library.sampling.schedules import model_sigmas, sigma_to_t


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
        out = self.unet((x * c_in).to(dtype), t.to(dtype), encoder_hidden_states=cond.to(dtype)).sample
        out = out.to(x.dtype)
        if self.prediction_type == "epsilon":
            return x - s * out
        return x / (s**2 + 1) - s * c_in * out


class CFGDenoiser:
    """Classifier-free guidance around a DiscreteDenoiser; both halves in one UNet batch."""

    def __init__(self, inner: DiscreteDenoiser, cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float) -> None:
        if cond.shape != uncond.shape:
            raise SamplingError(
                f"prompt and negative prompt embeddings differ in shape: {tuple(cond.shape)} vs {tuple(uncond.shape)}"
            )
        self.inner = inner
        self.cond = cond
        self.uncond = uncond
        self.cfg_scale = float(cfg_scale)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.cfg_scale == 1.0:
            return self.inner(x, sigma, self.cond)
        d = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([self.uncond, self.cond]))
        d_uncond, d_cond = d.chunk(2)
        return d_uncond + (d_cond - d_uncond) * self.cfg_scale
