"""Everything a run needs before its first step, built from a validated TrainConfig.

Order matters and follows sd-scripts: seed, data scan and plan (no model yet),
model, network (its init draws from the seeded global RNG), caches, optimizer,
schedule. `build_run` returns one `RunParts` the loop works on.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from library.config import TrainConfig, parse_key_value_args
from library.data.prepare import PreparedData, build_dataset
from library.errors import ConfigError
from library.models.modules import cast_module
from library.training import schedulers
from library.training.attention import install_lean_attention
from library.training.conv_path import install_small_conv_path
from library.training.flat_params import FlatGroups, can_flatten
from library.training.fp8 import store_fp8
from library.training.memory import keep_freed_memory
from library.training.noise import zero_terminal_snr_betas
from library.training.optimizers import OptimizerChoice, build_optimizer, resolve_class
from library.training.placement import offload_after_caching, place_caches
from library.training.rng import TrainingRNG

log = logging.getLogger(__name__)

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class RunParts:
    config: TrainConfig
    accelerator: Any
    device: torch.device
    weight_dtype: torch.dtype
    bundle: Any
    network: Any
    prepared: PreparedData
    dataset: Any
    optimizer: OptimizerChoice
    lr_scheduler: Any
    group_names: list[str]
    rng: TrainingRNG
    alphas_cumprod: torch.Tensor
    train_unet: bool
    train_text_encoder: bool
    v_prediction: bool
    notes: list[str] = field(default_factory=list)
    flat: FlatGroups | None = None  # the optimizer's flat copies of the LoRA parameters, when used
    unet_step: Any = None  # the UNet as the training step calls it (torch.compile'd with --torch_compile)
    pin_batches: bool = False  # the DataLoader hands out batches in pinned memory (CUDA, caches not on the GPU)
    val_dataset: Any = None  # the held-out images (--validation_split), cached like the training data
    text_cache: Any = None  # SDXL: cached text-encoder outputs by caption (library.data.text_conditioning.TextCache)

    @property
    def trainable_params(self) -> list[torch.nn.Parameter]:
        return [p for g in self.optimizer.optimizer.param_groups for p in g["params"]]


def make_accelerator(mixed_precision: str) -> Any:
    """A fresh Accelerator; the shared AcceleratorState is reset so runs in one process can differ."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(False)
    try:
        # cpu=True without CUDA: the same device, and under a multi-process launch it selects gloo
        return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    except ValueError as exc:
        raise ConfigError(f"mixed_precision {mixed_precision}: {exc}", ["use mixed_precision no on this machine"]) from None


def load_bundle(cfg: TrainConfig, device: torch.device, weight_dtype: torch.dtype) -> Any:
    """The base model, frozen, UNet and text encoder in the training dtype; the VAE stays fp32 (fp16 VAEs overflow)."""
    from library.models import load_model_bundle

    bundle = load_model_bundle(cfg.pretrained_model_name_or_path, vae=cfg.vae, use_ema_weights=cfg.use_ema_weights,
                               v2=cfg.v2, v_parameterization=cfg.v_parameterization)
    check_family_flags(cfg, bundle)
    cast_module(bundle.unet, weight_dtype, device)
    for encoder in bundle.text_encoders():
        cast_module(encoder, weight_dtype, device)
    if cfg.fp8_base:  # frozen Linear/Conv2d weights in float8, before LoRA hosts wrap them
        store_fp8(bundle.unet.requires_grad_(False))
        for encoder in bundle.text_encoders():
            store_fp8(encoder.requires_grad_(False))
    bundle.vae.to(device)
    if cfg.xformers:
        bundle.unet.enable_xformers_memory_efficient_attention()
    install_device_paths(bundle.unet, device)
    if cfg.unet_channels_last:
        bundle.unet.to(memory_format=torch.channels_last)
    return bundle


def check_family_flags(cfg: TrainConfig, bundle: Any) -> None:
    """The model decides the family (the loader already refused a --v2 that disagrees with it)."""
    family = bundle.facts.family
    if family.name == "sdxl" and cfg.clip_skip not in (None, 1):
        log.warning("clip_skip has no effect on SDXL (both encoders' penultimate layers are used, as in sd-scripts)")


def install_device_paths(unet: torch.nn.Module, device: torch.device) -> None:
    """The UNet's attention and convolution paths for the training device.

    Attention: the lean processor everywhere (it skips diffusers' per-call signature
    inspection); its small-head kernel only ever runs on CPU tensors, so on CUDA every call
    is torch's SDPA, which picks the flash or memory-efficient kernel. Convolutions: the
    direct small-convolution kernel is a CPU path and is not installed on other devices.
    Layers with another processor (xformers) keep it.
    """
    install_lean_attention(unet)
    if device.type == "cpu":
        install_small_conv_path(unet)


def build_network(cfg: TrainConfig, bundle: Any, device: torch.device, weight_dtype: torch.dtype) -> Any:
    """The LoRA network applied to the model; fp32 parameters unless full_fp16/full_bf16."""
    from library.lora.from_config import network_from_config

    encoders = bundle.text_encoders()
    network = network_from_config(cfg, bundle.unet, encoders if len(encoders) > 1 else bundle.text_encoder)
    network.apply_to()
    full = cfg.full_fp16 or cfg.full_bf16
    network.to(device, dtype=weight_dtype if full else torch.float32)
    network.train()
    return network


def enable_checkpointing(bundle: Any, train_text_encoder: bool) -> None:
    """Recompute activations in backward (much less memory); the UNet always, the text encoders when trained."""
    bundle.unet.enable_gradient_checkpointing()
    bundle.unet.train()
    if train_text_encoder:
        for te in bundle.text_encoders():
            if hasattr(te, "activation_checkpointing_enable"):  # transformers >= 5 name
                te.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            te.train()


def build_data(cfg: TrainConfig, prepared: PreparedData, bundle: Any, seed: int, train_text_encoder: bool,
               report: Any = None) -> Any:
    """The dataset, with latents cached when asked and text-encoder outputs cached whenever that is exact.

    A frozen text encoder fed fixed captions always gives the same outputs, so they
    are encoded once even without --cache_text_encoder_outputs: same result, less work.
    """
    fixed = all(s.spec.captions.is_fixed for lay in prepared.layouts for s in lay.subsets)
    cache_te = not train_text_encoder and fixed and bundle.text_encoder_2 is None  # SDXL: build_text_cache
    run_cfg = dataclasses.replace(cfg, cache_text_encoder_outputs=cache_te)
    with torch.no_grad():
        return build_dataset(prepared, run_cfg, seed=seed, tokenizer=bundle.tokenizer, vae=bundle.vae,
                             text_encoder=bundle.text_encoder, vae_id=bundle.facts.model_hash, progress=False,
                             report=report)


def build_text_cache(cfg: TrainConfig, bundle: Any, datasets: list[Any], train_text_encoder: bool) -> Any:
    """SDXL: both encoders' outputs and the pooled embedding per caption, once, when that is exact.

    As for SD1 (build_data), a frozen encoder fed fixed captions is cached even without the
    flag; --cache_text_encoder_outputs_to_disk also writes/reuses `<image>_te_outputs.npz`.
    """
    from library.data.text_conditioning import TextCache, TextEncoding

    if bundle.text_encoder_2 is None or train_text_encoder:
        return None
    layouts = [lay for ds in datasets for lay in ds.layouts]
    if not all(s.spec.captions.is_fixed for lay in layouts for s in lay.subsets):
        return None
    encoding = TextEncoding(bundle, cfg.clip_skip, cfg.max_token_length)
    cache = TextCache()
    with torch.no_grad():
        if cfg.cache_text_encoder_outputs_to_disk:
            for ds in datasets:
                captions = ds.fixed_captions()
                paths = [it.image.path for lay in ds.layouts for it in lay.items]
                cache.fill_from_disk(encoding, zip(paths, captions))
        else:
            for ds in datasets:
                cache.fill(encoding, ds.fixed_captions())
    return cache


def build_optimizer_and_schedule(cfg: TrainConfig, network: Any,
                                 total_steps: int) -> tuple[OptimizerChoice, Any, list[str], FlatGroups | None]:
    groups = network.prepare_optimizer_params(cfg.text_encoder_lr, cfg.unet_lr, cfg.learning_rate,
                                              text_encoder_2_lr=cfg.learning_rate_te2)
    if not groups:
        raise ConfigError("nothing to train", ["learning_rate, unet_lr and text_encoder_lr are all 0 or the network is empty"])
    names = [g.pop("name") for g in groups]
    cls, _ = resolve_class(cfg.optimizer_type)
    module_dropout = any(a.module_dropout for a in network.adapters)
    flat = None
    if can_flatten(cls, parse_key_value_args(cfg.optimizer_args, "optimizer_args"), module_dropout):
        flat = FlatGroups(groups)
    choice = build_optimizer(cfg.optimizer_type, cfg.optimizer_args, groups, cfg.learning_rate)
    if flat is not None:
        flat.attach(choice.optimizer)
    if choice.adafactor_initial_lr is not None:
        return choice, schedulers.make_adafactor_scheduler(choice.optimizer, choice.adafactor_initial_lr), names, flat
    spec = schedulers.schedule_spec(cfg.lr_scheduler, cfg.lr_warmup_steps, total_steps, cfg.lr_scheduler_num_cycles,
                                    cfg.lr_scheduler_power, cfg.learning_rate, cfg.lr_scheduler_args)
    return choice, schedulers.make_lr_scheduler(choice.optimizer, spec), names, flat


def _caching_report(events: Any, what: str) -> Any:
    if events is None:
        return None
    return lambda done, total: events.on_progress({"what": what, "done": done, "total": total})


def build_run(cfg: TrainConfig, prepared: PreparedData, seed: int, events: Any = None) -> RunParts:
    """Model, network, data, optimizer and schedule on the training device.

    `events` (optional) hears `on_progress` while latents are cached: counts the GUI shows with an ETA."""
    if cfg.torch_compile:
        check_dynamo_backend(cfg.dynamo_backend)
    accelerator = make_accelerator(cfg.mixed_precision)
    device = accelerator.device
    if device.type == "cpu":
        keep_freed_memory()
    weight_dtype = WEIGHT_DTYPES[cfg.mixed_precision]
    rng = TrainingRNG(seed, device)
    bundle = load_bundle(cfg, device, weight_dtype)
    network = build_network(cfg, bundle, device, weight_dtype)
    train_te = bool(network.text_encoder_loras) and not cfg.network_train_unet_only
    train_unet = bool(network.unet_loras) and not cfg.network_train_text_encoder_only
    if cfg.gradient_checkpointing:
        enable_checkpointing(bundle, train_te)
    dataset = build_data(cfg, prepared, bundle, seed, train_te, report=_caching_report(events, "caching latents"))
    val_dataset = (build_data(cfg, prepared.validation, bundle, seed, train_te,
                              report=_caching_report(events, "caching latents (validation)"))
                   if prepared.validation else None)
    text_cache = build_text_cache(cfg, bundle, [d for d in (dataset, val_dataset) if d is not None], train_te)
    te_cached = dataset.text_encoder_outputs is not None or text_cache is not None
    moved = offload_after_caching(bundle, dataset.latents is not None, te_cached,
                                  cfg.lowram, cfg.lowvram)  # only needed again for samples
    caches_on_device, cache_note = place_caches(dataset, device, cfg.max_data_loader_n_workers, cfg.lowvram)
    choice, lr_scheduler, names, flat = build_optimizer_and_schedule(cfg, network, prepared.plan.total_steps)
    choice.optimizer = accelerator.prepare(choice.optimizer)
    if cfg.full_fp16:
        allow_fp16_unscale(accelerator)
    from library.models import make_noise_scheduler

    ac = training_alphas_cumprod(make_noise_scheduler(bundle).betas, cfg.zero_terminal_snr).to(device)
    v_pred = cfg.v_parameterization or bundle.facts.prediction_type == "v_prediction"
    if v_pred:  # samples during training read the UNet's output as v too; copies, as configs may be shared
        bundle.scheduler_config = {**bundle.scheduler_config, "prediction_type": "v_prediction"}
        bundle.facts = dataclasses.replace(bundle.facts, prediction_type="v_prediction")
    notes = list(choice.notes) + ([cache_note] if cache_note else [])
    if moved and device.type != "cpu":
        notes.append(f"after caching, {' and '.join(moved)} moved to RAM (back on the GPU only for samples)")
    return RunParts(cfg, accelerator, device, weight_dtype, bundle, network, prepared, dataset, choice,
                    lr_scheduler, names, rng, ac, train_unet, train_te, v_pred, notes, flat,
                    compile_unet(bundle.unet, cfg.dynamo_backend) if cfg.torch_compile else bundle.unet,
                    pin_batches=device.type == "cuda" and not caches_on_device, val_dataset=val_dataset,
                    text_cache=text_cache)


def training_alphas_cumprod(betas: torch.Tensor, zero_terminal_snr: bool) -> torch.Tensor:
    """ᾱ of the training schedule: the model's, or rescaled to zero terminal SNR (Lin et al. 2023) with --zero_terminal_snr."""
    if zero_terminal_snr:
        betas = zero_terminal_snr_betas(betas)
    return torch.cumprod(1.0 - betas, dim=0)


def check_dynamo_backend(backend: str) -> None:
    """Refuse, before any model is loaded, a torch.compile backend this PyTorch does not have."""
    import torch._dynamo

    if backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise ConfigError(f"dynamo_backend {backend!r} is not available in this PyTorch", [
            f"available: {', '.join(sorted(torch._dynamo.list_backends()))}; inductor is the usual choice"])


def compile_unet(unet: torch.nn.Module, backend: str) -> Any:
    """The UNet behind torch.compile for training steps only; samples keep the eager module.

    Compiling happens at the first step (minutes on a CPU; again for each new bucket shape).
    """
    return torch.compile(unet, backend=backend)


def allow_fp16_unscale(accelerator: Any) -> None:
    """full_fp16 keeps fp16 gradients, which GradScaler refuses to unscale; sd-scripts lifts that check."""
    scaler = getattr(accelerator, "scaler", None)
    if scaler is None:
        return
    original = scaler._unscale_grads_

    def unscale(optimizer, inv_scale, found_inf, allow_fp16):
        return original(optimizer, inv_scale, found_inf, True)

    scaler._unscale_grads_ = unscale
