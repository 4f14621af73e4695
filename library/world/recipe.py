"""The training loops that turn the tiny architecture into `tiny-world`.

Two phases, as in Stable Diffusion itself:
1. the VAE as an autoencoder on world images (L1 + KL; Kingma & Welling 2014,
   with the L1 reconstruction term of Rombach et al. 2022 instead of MSE), after
   which the latent statistics are folded into its quant convs so that the
   standard SD scaling factor 0.18215 gives zero-mean, unit-std latents per
   channel and the architecture config stays byte-identical to `tiny`;
2. the UNet and the text encoder jointly as an ε-prediction model (Ho et al. 2020)
   with classifier-free-guidance caption dropout (Ho & Salimans 2022), AdamW,
   warm-up + cosine, and an EMA of the weights that is what gets shipped.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from library.training.loss import min_snr_weights, snr_from_alphas

SD_SCALING_FACTOR = 0.18215


@dataclass
class PhaseResult:
    """What a training phase reports for the provenance file."""

    steps: int
    seconds: float
    final_loss: float  # mean of the last 50 steps' losses


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine decay to `min_ratio` (Loshchilov & Hutter 2017)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def images_to_tensor(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [N,H,W,3] -> float [N,3,H,W] in [-1, 1], the range SD's VAE works in."""
    return images_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_vae(vae: torch.nn.Module, images: torch.Tensor, *, steps: int, batch_size: int, lr: float,
              kl_weight: float, generator: torch.Generator, crop: int = 32, full_steps: int = 0,
              colour_weight: float = 0.0, logvar_init: float | None = None, latent_offset: float = 0.0,
              log: Callable[[str], None] = print) -> PhaseResult:
    """Autoencoder training: L1 on pixels + kl_weight * KL(q(z|x) || N(0, I)) summed over latent elements.

    All but the last `full_steps` steps see random `crop`-pixel crops (a conv VAE learns
    edges and colours from crops at a quarter of the cost); the last ones see whole images
    so the mid-block attention and group norms settle on the full 8x8 latent.
    `colour_weight` multiplies the L1 of saturated (shape) pixels: shapes cover a few
    percent of a gray background, and without it the VAE learns backgrounds only.
    `logvar_init` sets the encoder's initial log-variance (quant_conv bias): at the default
    init the posterior std is ~1 and the decoder learns from latents drowned in noise, which
    leaves shapes as blobs; starting near-deterministic (e.g. -6) lets it learn edges first,
    and the KL term raises the variance only as far as it pays.
    `latent_offset` > 0 adds to each image's latent one random constant per channel (std
    latent_offset x the batch's latent std) before decoding. The tiny UNet's last GroupNorm
    (one channel per group) cannot reproduce a per-channel spatial mean, so what the decoder
    reads from that mean comes out random in samples (tinted backgrounds). Measured with 0.5
    (full recipe): prompt colour 1.00 vs 0.97, shape 0.61 vs 0.59, clean backgrounds.
    """
    if logvar_init is not None:
        with torch.no_grad():
            c = vae.quant_conv.out_channels // 2
            vae.quant_conv.bias[c:] = logvar_init
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, steps // 20, 0.05))
    vae.train()
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        dev = images.device
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator, device=dev)
        x = images_to_tensor(images[idx])
        if step < steps - full_steps:
            top, left = (int(v) * 8 for v in torch.randint(0, (x.shape[-1] - crop) // 8 + 1, (2,),
                                                           generator=generator, device=dev))
            x = x[:, :, top:top + crop, left:left + crop]
        flip = torch.rand(batch_size, generator=generator, device=dev) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator, device=dev)
        if latent_offset > 0:
            shift = torch.randn((z.shape[0], z.shape[1], 1, 1), generator=generator, device=dev)
            z = z + latent_offset * z.detach().std() * shift
        recon = vae.decode(z).sample
        loss = (saturation_weights(x, colour_weight) * (recon - x).abs()).mean() + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} ({time.perf_counter() - start:.0f}s)")
    vae.eval()
    return PhaseResult(steps, time.perf_counter() - start, sum(losses[-50:]) / len(losses[-50:]))


def saturation_weights(x: torch.Tensor, colour_weight: float) -> torch.Tensor:
    """Per-pixel loss weight 1 + colour_weight * saturation, saturation = (max - min) over RGB in [0, 1]."""
    sat = (x.amax(dim=1, keepdim=True) - x.amin(dim=1, keepdim=True)) / 2
    return 1.0 + colour_weight * sat


@torch.no_grad()
def encode_posteriors(vae: torch.nn.Module, images: torch.Tensor, batch_size: int = 256
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (unscaled latents), batched to bound memory."""
    means, stds = [], []
    for i in range(0, images.shape[0], batch_size):
        post = vae.encode(images_to_tensor(images[i:i + batch_size])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def fold_latent_normalisation(vae: torch.nn.Module, mean: torch.Tensor, std: torch.Tensor,
                              scaling_factor: float = SD_SCALING_FACTOR) -> dict[str, list[float]]:
    """Fold a per-channel affine map into quant_conv / post_quant_conv so latents*scaling_factor ~ N(0, 1).

    Given the posterior means/stds of the data, the sampled latents z have per-channel
    mean m_c and std s_c. With a_c = 1 / (scaling_factor * s_c), the new encoder gives
    z'_c = a_c (z_c - m_c) (mean row scaled and shifted, log-variance bias + 2 ln a_c),
    and the decoder's post_quant_conv undoes it (columns / a_c, bias + W m), so the
    decoded image of any latent is unchanged. Returns the measured statistics.
    """
    m = mean.mean(dim=(0, 2, 3))
    var = (mean.var(dim=(0, 2, 3)) + std.pow(2).mean(dim=(0, 2, 3)))
    s = var.sqrt()
    a = 1.0 / (scaling_factor * s)
    c = m.numel()
    qc, pqc = vae.quant_conv, vae.post_quant_conv
    pqc.bias += (pqc.weight[:, :, 0, 0] @ m)
    pqc.weight /= a[None, :, None, None]
    qc.bias[:c] = a * (qc.bias[:c] - m)
    qc.weight[:c] *= a[:, None, None, None]
    qc.bias[c:] += 2.0 * torch.log(a)
    return {"channel_mean": m.tolist(), "channel_std": s.tolist(), "channel_gain": a.tolist(),
            "overall_std": float(torch.sqrt(var.mean())), "scaling_factor": scaling_factor}


@dataclass
class DiffusionData:
    """Cached, already-normalised inputs of the diffusion phase."""

    latent_mean: torch.Tensor  # [N,4,8,8], unscaled posterior means (after folding)
    latent_std: torch.Tensor  # [N,4,8,8]
    input_ids: torch.Tensor  # [N,77] token ids of each caption
    empty_ids: torch.Tensor  # [77] token ids of "" (the unconditional prompt)


class EMA:
    """Exponential moving average of parameters (Polyak averaging), kept in fp32 beside the model."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm-up so early averages are not stuck at init
        for s, p in zip(self.shadow.parameters(), module.parameters()):
            s.lerp_(p.detach(), 1.0 - d)


def diffusion_loss(unet: torch.nn.Module, text_encoder: torch.nn.Module, scheduler, data: DiffusionData,
                   idx: torch.Tensor, caption_dropout: float, generator: torch.Generator,
                   min_snr_gamma: float | None = None) -> torch.Tensor:
    """ε-prediction MSE for one batch: sample z from the posterior, noise it at a random t, predict the noise.

    With `min_snr_gamma`, each sample's loss is weighted min(SNR, γ)/SNR (Hang et al. 2023): the
    nearly clean timesteps, which dominate plain ε-MSE, stop crowding out the noisy ones where
    layout and shape are decided — the part a tiny model learns slowest.
    """
    n, dev = idx.numel(), idx.device
    mean = data.latent_mean[idx]
    z = (mean + data.latent_std[idx] * torch.randn(mean.shape, generator=generator, device=dev)) * SD_SCALING_FACTOR
    noise = torch.randn(z.shape, generator=generator, device=dev)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator, device=dev)
    noisy = scheduler.add_noise(z, noise, t)
    ids = data.input_ids[idx].clone()
    drop = torch.rand(n, generator=generator, device=dev) < caption_dropout
    ids[drop] = data.empty_ids
    cond = text_encoder(ids).last_hidden_state
    pred = unet(noisy, t, encoder_hidden_states=cond).sample
    if not min_snr_gamma:
        return F.mse_loss(pred, noise)
    per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
    snr_t = snr_from_alphas(scheduler.alphas_cumprod)[t.cpu()].to(per_sample.device)
    return (per_sample * min_snr_weights(snr_t, min_snr_gamma)).mean()


def train_diffusion(unet: torch.nn.Module, text_encoder: torch.nn.Module, scheduler, data: DiffusionData, *,
                    steps: int, batch_size: int, lr: float, te_lr: float, caption_dropout: float,
                    ema_decay: float, generator: torch.Generator, min_snr_gamma: float | None = None,
                    log: Callable[[str], None] = print) -> tuple[PhaseResult, EMA, EMA]:
    """Joint UNet + text-encoder training; returns the EMAs, whose weights are the ones shipped."""
    opt = torch.optim.AdamW([{"params": unet.parameters(), "lr": lr},
                             {"params": text_encoder.parameters(), "lr": te_lr}], weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps, min(200, steps // 10), 0.02))
    ema_unet, ema_te = EMA(unet, ema_decay), EMA(text_encoder, ema_decay)
    unet.train()
    text_encoder.train()
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, data.input_ids.shape[0], (batch_size,), generator=generator,
                            device=data.input_ids.device)
        loss = diffusion_loss(unet, text_encoder, scheduler, data, idx, caption_dropout, generator, min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        sched.step()
        ema_unet.update(unet, step)
        ema_te.update(text_encoder, step)
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            recent = sum(losses[-100:]) / len(losses[-100:])
            log(f"unet step {step}/{steps} loss {recent:.4f} ({time.perf_counter() - start:.0f}s)")
    unet.eval()
    text_encoder.eval()
    result = PhaseResult(steps, time.perf_counter() - start, sum(losses[-50:]) / len(losses[-50:]))
    return result, ema_unet, ema_te
