"""VAE decoding with A1111's fp32 retry for the SDXL VAE's fp16 NaN ("black image") problem.

The original SDXL VAE overflows in fp16: some activations exceed 65504, become inf, and the
decoded image is NaN (A1111 shows it black). A1111 ("Automatically revert VAE to 32-bit floats")
detects the NaN, converts the VAE to fp32 and decodes again; diffusers' SDXL pipeline upcasts
up front (`force_upcast`). We decode in the VAE's own dtype, and only when the result is not
finite decode that batch again in fp32, say so in the log, and put the VAE back in its dtype
(the bundle's VAE is shared with training, which may rely on it).
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

NAN_MESSAGE = ("the VAE produced NaN/inf in {dtype} (the SDXL VAE overflows in fp16); decoded again in fp32. "
               "To keep the VAE in fp32 while training use --no_half_vae (sd-scripts' flag), or give an "
               "fp16-fixed SDXL VAE with --vae")


def decode_to_pixels(vae, latents: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(pixels in [-1, 1] as fp32, whether the fp32 retry was needed) for scaled latents."""
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))
    dtype = next(vae.parameters()).dtype
    pixels = vae.decode((latents / scale).to(dtype)).sample.float()
    if dtype == torch.float32 or bool(torch.isfinite(pixels).all()):
        return pixels, False
    log.warning(NAN_MESSAGE.format(dtype=str(dtype).replace("torch.", "")))
    vae.to(torch.float32)
    try:
        pixels = vae.decode((latents / scale).float()).sample.float()
    finally:
        vae.to(dtype)
    return pixels, True
