"""The training loss, term by term as sd-scripts computes it.

loss_i = mean_{C,H,W}( ℓ(pred, target) ) · w_i (prior_loss_weight for
regularization items) · snr_weight(t_i) · debias_weight(t_i); the step loss
is the batch mean.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")


def snr_from_alphas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021, "Variational Diffusion Models")."""
    ac = alphas_cumprod.double()
    return (ac / (1.0 - ac)).float()


def min_snr_weights(snr_t: torch.Tensor, gamma: float, v_prediction: bool = False) -> torch.Tensor:
    """Min-SNR-γ weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy").

    ε-prediction: min(SNR, γ) / SNR; v-prediction: min(SNR, γ) / (SNR + 1).
    """
    clipped = torch.clamp(snr_t, max=gamma)
    return clipped / (snr_t + 1.0) if v_prediction else clipped / snr_t


def debiased_estimation_weights(snr_t: torch.Tensor, v_prediction: bool = False) -> torch.Tensor:
    """Debiased estimation (Yu et al. 2024, "Debias the Training of Diffusion Models"), as sd-scripts applies it.

    ε-prediction: 1/√SNR; v-prediction: 1/(SNR + 1); SNR capped at 1000 (t = 0 has SNR → ∞).
    It raises the weight of the noisy timesteps, where an image's layout is decided and the
    ε-loss is small, and lowers that of the nearly clean ones, which only refine texture.
    """
    capped = torch.clamp(snr_t, max=1000.0)
    return 1.0 / (capped + 1.0) if v_prediction else 1.0 / torch.sqrt(capped)


def v_pred_snr_scale(snr_t: torch.Tensor) -> torch.Tensor:
    """SNR/(SNR + 1) with SNR capped at 1000: the ε-loss to v-loss ratio (Salimans & Ho 2022, "Progressive Distillation").

    At a given x_t, ε − ε̂ = √ᾱ·(v − v̂) and ᾱ = SNR/(SNR + 1), so this factor turns a
    v-loss into the size of the ε-loss (sd-scripts' get_snr_scale; the cap keeps t = 0 finite).
    """
    capped = torch.clamp(snr_t, max=1000.0)
    return capped / (capped + 1.0)


def scale_v_pred_like_noise_pred(loss: torch.Tensor, snr_t: torch.Tensor) -> torch.Tensor:
    """--scale_v_pred_loss_like_noise_pred: v-loss × SNR/(SNR + 1) (Salimans & Ho 2022), sd-scripts' formula."""
    return loss * v_pred_snr_scale(snr_t)


def add_v_pred_like_loss(loss: torch.Tensor, snr_t: torch.Tensor, weight: float) -> torch.Tensor:
    """--v_pred_like_loss: ε-loss + weight · ε-loss · (SNR + 1)/SNR, a v-like term (Salimans & Ho 2022), as sd-scripts adds it."""
    return loss + loss / v_pred_snr_scale(snr_t) * weight


def huber_threshold(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, huber_c: float,
                    schedule: str, num_train_timesteps: int) -> torch.Tensor:
    """Per-sample Huber δ (Khrapov et al. 2024, "Improving Diffusion Models's Data-Corruption Resistance using Scheduled Pseudo-Huber Loss").

    constant: c; exponential: exp(−t·(−ln c)/T); snr: (1 − c)/(1 + σ_t)² + c with σ_t = √((1−ᾱ)/ᾱ).
    """
    t = timesteps  # computed where the timesteps are: no round trip to the host
    if schedule == "constant":
        return torch.full(t.shape, float(huber_c), device=t.device)
    if schedule == "exponential":
        alpha = -math.log(huber_c) / num_train_timesteps
        return torch.exp(-alpha * t.float())
    if schedule == "snr":
        ac = alphas_cumprod.to(t.device).float()[t]
        sigmas = ((1.0 - ac) / ac) ** 0.5
        return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    raise ValueError(f"unknown huber_schedule {schedule!r}")


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str,
                     delta: torch.Tensor | None = None) -> torch.Tensor:
    """ℓ per element: squared error, absolute error, or pseudo-Huber (Charbonnier 1994) scaled as sd-scripts.

    huber: 2δ(√((p−y)² + δ²) − δ); smooth_l1: 2(√((p−y)² + δ²) − δ).
    """
    if loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    if loss_type in ("huber", "smooth_l1"):
        if delta is None:
            raise ValueError(f"{loss_type} loss needs a threshold")
        d = delta.view(-1, *([1] * (pred.dim() - 1))).to(pred.dtype)
        core = torch.sqrt((pred - target) ** 2 + d ** 2) - d
        return 2 * d * core if loss_type == "huber" else 2 * core
    raise ValueError(f"unknown loss_type {loss_type!r}")


def masked_elementwise(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sd-scripts' `apply_masked_loss`: the (B, 1, H, W) pixel mask area-averaged to the loss's size, multiplied in."""
    weights = F.interpolate(mask.to(loss.device, loss.dtype), size=loss.shape[2:], mode="area")
    return loss * weights


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                    delta: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ℓ over every axis but the batch axis (C, H, W), computed in fp32.

    With a (B, 1, H_px, W_px) loss mask (--masked_loss) ℓ is first multiplied by the mask
    area-averaged to the latent size (sd-scripts' apply_masked_loss); the mean still
    divides by the whole area, as in sd-scripts.
    """
    loss = elementwise_loss(pred.float(), target.float(), loss_type, delta)
    if mask is not None:
        loss = masked_elementwise(loss, mask)
    return loss.mean(dim=tuple(range(1, loss.dim())))


def weighted_batch_loss(per_sample: torch.Tensor, item_weights: torch.Tensor,
                        timesteps: torch.Tensor, snr: torch.Tensor | None,
                        min_snr_gamma: float | None, v_prediction: bool = False,
                        debiased_estimation: bool = False, scale_v_like_eps: bool = False,
                        v_pred_like: float | None = None) -> torch.Tensor:
    """Batch mean of per-sample losses × item weight (prior_loss_weight) × the SNR-based weights.

    Any of them may be on at once; sd-scripts applies them in this order: min-SNR,
    scale_v_pred_loss_like_noise_pred, v_pred_like_loss, debiased estimation.
    """
    loss = per_sample * item_weights.to(per_sample.device, per_sample.dtype)
    if min_snr_gamma or debiased_estimation or scale_v_like_eps or v_pred_like:
        if snr is None:
            raise ValueError("the SNR-based loss weights need the SNR table")
        snr_t = snr.to(per_sample.device)[timesteps]
        if min_snr_gamma:
            loss = loss * min_snr_weights(snr_t, min_snr_gamma, v_prediction)
        if scale_v_like_eps:
            loss = scale_v_pred_like_noise_pred(loss, snr_t)
        if v_pred_like:
            loss = add_v_pred_like_loss(loss, snr_t, v_pred_like)
        if debiased_estimation:
            loss = loss * debiased_estimation_weights(snr_t, v_prediction)
    return loss.mean()
