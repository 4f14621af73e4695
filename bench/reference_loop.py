"""The reference loop for bench/train_speed.py: a plain diffusers + PEFT LoRA training step.

Written the way diffusers' examples/text_to_image/train_text_to_image_lora.py trains (facts
from that script, our own code): UNet, VAE and text encoder cast to the training dtype; the
LoRA added with `unet.add_adapter(LoraConfig(..., init_lora_weights="gaussian"))`, its
parameters cast to float32 only for fp16; `torch.optim.AdamW` (betas 0.9/0.999, weight decay
1e-2, eps 1e-8); each step encodes the images with the VAE and the captions with the text
encoder, adds DDPM noise at random timesteps, predicts with the UNet under autocast (what
Accelerate's prepared model does), takes the mean-squared error in float32, reads the loss
back for logging (`.item()`, as the script's `avg_loss.item()`), clips the gradient norm to
1.0, steps the optimizer and zeroes the gradients.

SDXL (`family` "sdxl" / "tiny-sdxl") as diffusers' train_text_to_image_lora_sdxl.py trains: both
text encoders' penultimate hidden states concatenated, the pooled embedding from the second
encoder's projection, `add_time_ids` = original size + crop top-left + target size (no crop
here), passed as `added_cond_kwargs`; the VAE stays in float32 (the script's default, against
the SDXL VAE's fp16 NaNs) while the UNet and text encoders take the training dtype.

Differences, so that both sides train the same thing: the LoRA targets are lorasmith's
(sd-scripts') UNet layers at the same rank and alpha, not only to_q/to_k/to_v/to_out.0;
batches are random tensors made once on the device (no data loading: this favours the
reference); the weights are random, from the same shipped configs and default initialisation.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

MAX_GRAD_NORM = 1.0


@dataclass
class ReferenceCase:
    family: str  # shipped config family: "tiny", "sd15", "tiny-sdxl" or "sdxl"
    resolution: int
    batch: int
    precision: str  # "no", "bf16" or "fp16"
    gradient_checkpointing: bool
    rank: int = 4
    alpha: float = 1.0
    train_text_encoder: bool = False
    warmup: int = 3
    timed: int = 10


def build(case: ReferenceCase, device: torch.device) -> dict[str, Any]:
    """Models, LoRA, optimizer and noise schedule as the diffusers script sets them up."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig, inject_adapter_in_model

    from library.lora.targets import find_targets
    from library.models.configs import load_family_configs
    from library.models.modules import build_text_encoder, build_text_encoder_2, build_unet, build_vae

    configs = load_family_configs(case.family)  # random weights, as lorasmith's side (no hashing: not needed here)
    torch.manual_seed(0)
    unet, vae, te = build_unet(configs["unet"]), build_vae(configs["vae"]), build_text_encoder(configs["text_encoder"])
    te2 = build_text_encoder_2(configs["text_encoder_2"]) if "text_encoder_2" in configs else None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(case.precision, torch.float32)
    for module in (unet, vae, te, te2):
        if module is not None:
            module.requires_grad_(False)
            module.to(device, dtype=torch.float32 if module is vae and te2 is not None else dtype)
    lora = dict(r=case.rank, lora_alpha=case.alpha, init_lora_weights="gaussian")
    unet.add_adapter(LoraConfig(**lora, target_modules=[t.path for t in find_targets(unet, None)]))
    trained = [unet]
    if case.train_text_encoder:  # PEFT's own injection: transformers' add_adapter wants a newer PEFT than some installs
        inject_adapter_in_model(LoraConfig(**lora, target_modules=[t.path for t in find_targets(None, te)]), te)
        trained.append(te)
    for model in trained:
        model.train()
    params = [p for model in trained for p in model.parameters() if p.requires_grad]
    if case.precision == "fp16":
        for p in params:
            p.data = p.data.float()
    if case.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    return {"unet": unet, "vae": vae, "te": te, "te2": te2, "params": params, "optimizer": optimizer, "dtype": dtype,
            "scheduler": DDPMScheduler.from_config(configs["scheduler"]),
            "pixels": torch.rand(case.batch, 3, case.resolution, case.resolution, device=device) * 2 - 1,
            "ids": torch.randint(0, te.config.vocab_size, (case.batch, 77), device=device),
            "scaler": torch.amp.GradScaler(device.type) if case.precision == "fp16" else None}


def encode(m: dict[str, Any], train_text_encoder: bool) -> tuple[torch.Tensor, Any]:
    """Latents and text-encoder outputs of the batch, as the script computes them each step.

    The conditioning is a tensor, or for SDXL (hidden states, added_cond_kwargs).
    """
    vae = m["vae"]
    with torch.no_grad():
        pixels = m["pixels"].to(next(vae.parameters()).dtype)
        latents = (vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor).to(m["dtype"])
    with torch.set_grad_enabled(train_text_encoder):
        if m["te2"] is None:
            return latents, m["te"](m["ids"])[0]
        return latents, sdxl_prompt(m)


def sdxl_prompt(m: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The SDXL script's encode_prompt and add_time_ids: penultimate states of both encoders, pooled from the second."""
    out1 = m["te"](m["ids"], output_hidden_states=True)
    out2 = m["te2"](m["ids"], output_hidden_states=True)
    hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    res = m["pixels"].shape[-1]
    time_ids = torch.tensor([[res, res, 0, 0, res, res]] * m["ids"].shape[0], device=hidden.device, dtype=hidden.dtype)
    return hidden, {"text_embeds": out2.text_embeds, "time_ids": time_ids}


def step(m: dict[str, Any], device: torch.device, cached: tuple | None = None, train_text_encoder: bool = False) -> float:
    """One optimizer step of the script's loop (with `cached` latents/outputs: without the encoders); returns the loss."""
    unet, sched = m["unet"], m["scheduler"]
    latents, cond = encode(m, train_text_encoder) if cached is None else cached
    if cached is not None and train_text_encoder:
        cond = m["te"](m["ids"])[0] if m["te2"] is None else sdxl_prompt(m)
    noise = torch.randn_like(latents)
    steps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=device).long()
    noisy = sched.add_noise(latents, noise, steps)
    hidden, added = cond if isinstance(cond, tuple) else (cond, None)
    with torch.autocast(device.type, dtype=m["dtype"], enabled=m["dtype"] is not torch.float32):
        pred = unet(noisy, steps, hidden, added_cond_kwargs=added).sample
    loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
    value = loss.detach().item()
    scaler = m["scaler"]
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(m["optimizer"])
        torch.nn.utils.clip_grad_norm_(m["params"], MAX_GRAD_NORM)
        scaler.step(m["optimizer"])
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m["params"], MAX_GRAD_NORM)
        m["optimizer"].step()
    m["optimizer"].zero_grad(set_to_none=True)
    return value


def _slow_conv_forward_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001, ANN003
    """2 x outputs x (in-channels x kernel): torch's table gives this op the generic conv formula, whose
    arguments differ (torch bug), and lorasmith's small CPU convolutions take it."""
    return 2 * math.prod(out_shape) * math.prod(w_shape[1:])


def _slow_conv_backward_flops(grad_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001, ANN003
    """Input and weight gradients: twice the forward's work."""
    return 4 * math.prod(grad_shape) * math.prod(w_shape[1:])


def flop_counter() -> Any:
    """torch's FlopCounterMode, with the direct CPU convolution counted correctly."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={aten._slow_conv2d_forward: _slow_conv_forward_flops,
                                                          aten._slow_conv2d_backward: _slow_conv_backward_flops})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(case: ReferenceCase, device: torch.device, m: dict[str, Any], cached: bool) -> dict[str, Any]:
    """Warm-up steps, one step under FlopCounterMode, then `timed` steps timed as one span."""
    fixed = encode(m, False) if cached else None

    def one() -> float:
        return step(m, device, fixed, case.train_text_encoder)

    for _ in range(case.warmup):
        one()
    counter = flop_counter()
    with counter:
        one()
    sync(device)
    times = []
    start = time.perf_counter()
    for _ in range(case.timed):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
    sync(device)
    span = time.perf_counter() - start
    return {"cached": cached, "span_s": span, "steps": case.timed, "step_times": times,
            "flops_per_step": counter.get_total_flops()}


def run_both(case: ReferenceCase, device: torch.device) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The loop as the script is written, then with cached latents (and text-encoder outputs when it is frozen).

    The caller reads the peak memory after each and resets it in between.
    """
    m = build(case, device)
    for cached in (False, True):
        yield run(case, device, m, cached), m
