"""Expected peak GPU memory of a training config, worked out before any weights load.

The exact parts are counted from the real objects built on the `meta` device from
the shipped architecture configs: base weights by dtype, the LoRA network's
parameters and gradients, and the optimizer's states (the configured optimizer
class, stepped once on one real tensor of each distinct LoRA parameter shape).
Activations are traced: one training step (forward, loss, backward) of the
UNet (and the text encoder when it is trained) runs on fake tensors
(torch's FakeTensorMode: shapes and dtypes, no data) at the configured
resolution and batch, while a dispatch mode adds up the bytes of every storage
an operation creates and subtracts them when the storage is freed; its highest
value is the step's activation peak (tensors saved for backward plus
temporaries). This runs with and without gradient checkpointing, and for the
VAE encoding that latent caching does. The CUDA caching allocator's
`max_memory_allocated` counts the same live storages (rounded to 512 bytes);
kernel workspaces (cuBLAS, cuDNN) come on top and are an allowance here.
The trace runs on fake CPU tensors under CPU autocast (fake CUDA tensors need a
CUDA build), with diffusers' own SDPA attention (the fused kernels, as on the GPU;
lorasmith's small-head CPU attention path is not taken on a GPU).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import weakref
from dataclasses import dataclass, field
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

from library.config import TrainConfig, parse_resolution

# cuBLAS / cuDNN workspaces the caching allocator hands out during the step.
WORKSPACE_BYTES = 64 * 2**20
TOKENS_PER_CHUNK = 77
FP8_BYTES = 1


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages operations create while active, live now and at most (freed ones subtracted)."""

    def __init__(self, baseline: list[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._known: dict[int, Any] = {}
        self._keep = [t.untyped_storage() for t in baseline]  # existing storages: views of them cost nothing
        for s in self._keep:
            self._known[id(s)] = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t.untyped_storage())
        return out

    def _add(self, storage: Any) -> None:
        key = id(storage)
        if key in self._known:
            return
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)
        self._known[key] = weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._known.pop(key, None)


@contextlib.contextmanager
def cuda_float32_norms() -> Iterator[None]:
    """CUDA autocast runs group_norm and layer_norm in float32 (a float32 copy of the input is saved
    for backward, the output is float32); CPU autocast, which the trace runs under, keeps them in
    bf16. For the trace only, torch.nn.functional's two functions are wrapped to do what CUDA does.
    A module attribute rather than a TorchFunctionMode: checkpointing's recompute in backward must see it.
    """
    originals = {name: getattr(F, name) for name in ("group_norm", "layer_norm")}

    def wrap(fn):  # noqa: ANN001, ANN202
        def upcast(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if not torch.is_autocast_enabled("cpu"):
                return fn(*args, **kwargs)
            up = tree_map(lambda a: a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a,
                          (args, kwargs))
            with torch.autocast("cpu", enabled=False):
                return fn(*up[0], **up[1])
        return upcast

    try:
        for name, fn in originals.items():
            setattr(F, name, wrap(fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(F, name, fn)


@dataclass
class VramEstimate:
    """Peak GPU memory by part, in bytes; `total` is what torch.cuda.max_memory_allocated should show."""

    resolution: tuple[int, int]
    batch: int
    gradient_checkpointing: bool
    weights: dict[str, int]  # component -> bytes on the GPU while training
    vae_bytes: int
    lora_params: int
    lora_param_count: int
    gradients: int
    optimizer_states: int
    optimizer_note: str
    activations: int  # traced peak of one step, as configured
    activations_other: int  # the same with gradient checkpointing switched the other way
    caching_peak: int  # weights + VAE + its encoding while latents are cached (0 when they are not)
    workspace: int = WORKSPACE_BYTES
    notes: list[str] = field(default_factory=list)

    @property
    def training_peak(self) -> int:
        static = sum(self.weights.values()) + self.lora_params + self.gradients + self.optimizer_states
        return static + self.activations + self.workspace

    @property
    def total(self) -> int:
        return max(self.training_peak, self.caching_peak + self.workspace)

    def with_checkpointing_flipped(self) -> int:
        """The total with gradient checkpointing switched the other way."""
        training = self.training_peak - self.activations + self.activations_other
        return max(training, self.caching_peak + self.workspace)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "training_peak": self.training_peak, "total": self.total}


def model_family(name: str) -> str:
    """The shipped architecture configs a model name or path stands for, without loading weights
    (library.models.peek: built-in names, safetensors headers, diffusers configs; SD1.5's otherwise)."""
    from library.models.peek import config_family_of

    return config_family_of(name)


def storage_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind `tensors` (views and shared weights counted once)."""
    seen: dict[tuple, int] = {}
    for t in tensors:
        if t is None:
            continue
        if t.is_meta:  # no storage to share: each tensor is its own
            seen[("meta", id(t))] = t.numel() * t.element_size()
        else:
            storage = t.untyped_storage()
            seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def weight_bytes(module: torch.nn.Module, dtype: torch.dtype, fp8: bool = False) -> int:
    """Bytes of a frozen module's floating-point weights stored in `dtype` (Linear/Conv weights in 1 byte with fp8)."""
    total = 0
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.is_floating_point():
                total += p.numel() * p.element_size()
            elif fp8 and name == "weight" and isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                total += p.numel() * FP8_BYTES
            else:
                total += p.numel() * torch.empty((), dtype=dtype).element_size()
        total += sum(b.numel() * b.element_size() for b in mod.buffers(recurse=False))
    return total


def weight_dtype(cfg: TrainConfig) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)


def param_dtype(cfg: TrainConfig) -> torch.dtype:
    """LoRA parameters are float32 unless full_fp16/full_bf16 keep them in the training dtype."""
    return weight_dtype(cfg) if (cfg.full_fp16 or cfg.full_bf16) else torch.float32


@functools.lru_cache(maxsize=4)
def _skeleton_configs(family: str) -> dict:
    from library.models.configs import load_family_configs

    return load_family_configs(family)


@dataclass
class Skeleton:
    """The model and the LoRA network on the meta device, with the frozen weights' bytes counted before the network."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    network: Any
    weights: dict[str, int]
    text_encoder_2: torch.nn.Module | None = None  # SDXL


def build_skeleton(cfg: TrainConfig) -> Skeleton:
    """UNet, text encoder, VAE and the configured LoRA network (applied), all on the meta device."""
    from library.lora.from_config import network_from_config
    from library.models.modules import build_text_encoder, build_text_encoder_2, build_unet, build_vae

    configs = _skeleton_configs(model_family(cfg.pretrained_model_name_or_path))
    unet = build_unet(configs["unet"], empty=True).requires_grad_(False)
    vae = build_vae(configs["vae"], empty=True).requires_grad_(False)
    te = build_text_encoder(configs["text_encoder"], empty=True).requires_grad_(False)
    te2 = (build_text_encoder_2(configs["text_encoder_2"], empty=True).requires_grad_(False)
           if "text_encoder_2" in configs else None)
    dtype = weight_dtype(cfg)
    weights = {"unet": weight_bytes(unet, dtype, fp8=bool(getattr(cfg, "fp8_base", False))),
               "text_encoder": weight_bytes(te, dtype) + (weight_bytes(te2, dtype) if te2 is not None else 0),
               "vae": weight_bytes(vae, torch.float32)}
    with torch.device("meta"):
        network = network_from_config(dataclasses.replace(cfg, network_weights=None, dim_from_weights=False), unet,
                                      [te, te2] if te2 is not None else te)
    network.apply_to()
    network.to(dtype=param_dtype(cfg))
    return Skeleton(unet, te, vae, network, weights, te2)


def trained_parts(cfg: TrainConfig, network: Any) -> tuple[bool, bool]:
    """(train the UNet, train the text encoder), as the trainer decides it."""
    train_te = bool(network.text_encoder_loras) and not cfg.network_train_unet_only
    train_unet = bool(network.unet_loras) and not cfg.network_train_text_encoder_only
    return train_unet, train_te


def trainable_parameters(cfg: TrainConfig, network: Any) -> list[torch.nn.Parameter]:
    """The parameters the optimizer gets (groups with a learning rate of 0 are left out, as in training)."""
    groups = network.prepare_optimizer_params(cfg.text_encoder_lr, cfg.unet_lr, cfg.learning_rate,
                                              text_encoder_2_lr=getattr(cfg, "learning_rate_te2", None))
    return [p for g in groups for p in g["params"]]


def zero_initialised(network: Any) -> set[int]:
    """ids of the parameters a fresh network starts at zero (the `up` weights): some optimizers keep less for them."""
    return {id(a.lora_up.weight) for a in network.adapters}


def optimizer_state_bytes(cfg: TrainConfig, params: list[torch.nn.Parameter],
                          zero: set[int] = frozenset()) -> tuple[int, str]:
    """Bytes of the configured optimizer's states for `params`, and how they were counted.

    The optimizer is built and stepped once on one real CPU tensor of each distinct parameter
    shape, dtype and start (zero for the ids in `zero`, as the `up` weights; Prodigy keeps a
    scalar instead of a copy for those); its state tensors' bytes times the number of such
    parameters give the total (exact for per-element states and per-tensor factored ones).
    """
    from library.training.optimizers import build_optimizer

    kinds: dict[tuple, int] = {}
    for p in params:
        key = (tuple(p.shape), p.dtype, id(p) in zero)
        kinds[key] = kinds.get(key, 0) + 1
    total = 0
    for (shape, dtype, is_zero), count in kinds.items():
        try:
            total += _states_of_one(cfg, build_optimizer, shape, dtype, is_zero) * count
        except Exception as exc:  # an optimizer that cannot step on the CPU (8-bit ones need CUDA)
            per_element = 2 if "8bit" in cfg.optimizer_type.lower() else 2 * torch.empty((), dtype=dtype).element_size()
            fallback = sum(p.numel() for p in params) * per_element
            return fallback, f"assumed {per_element} bytes a parameter ({cfg.optimizer_type} could not step here: {exc})"
    return total, f"{cfg.optimizer_type}, counted from one step"


def _states_of_one(cfg: TrainConfig, build_optimizer: Any, shape: tuple, dtype: torch.dtype, zero: bool) -> int:
    param = torch.nn.Parameter(torch.zeros(shape, dtype=dtype) if zero else torch.full(shape, 1e-2, dtype=dtype))
    param.grad = torch.full(shape, 1e-3, dtype=dtype)
    choice = build_optimizer(cfg.optimizer_type, list(cfg.optimizer_args or []), [{"params": [param]}],
                             cfg.learning_rate or 1e-4)
    choice.optimizer.step()
    tensors = [t for state in choice.optimizer.state.values() for t in state.values()
               if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0]
    return storage_bytes(tensors)


def _fake_module(module: torch.nn.Module, dtype: torch.dtype | None) -> None:
    """Replace a meta module's parameters and buffers by fake tensors (run inside a FakeTensorMode)."""
    for mod in module.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and p.is_meta:
                kind = dtype if dtype is not None and p.is_floating_point() else p.dtype
                mod._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=kind), p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None:  # meta ones, and the text encoder's real position_ids
                mod._buffers[name] = torch.zeros(b.shape, dtype=b.dtype)


def _set_checkpointing(unet: torch.nn.Module, encoders: list[torch.nn.Module], on: bool, train_te: bool) -> None:
    if on:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    for te in encoders:
        if train_te and on:
            te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif train_te:
            te.gradient_checkpointing_disable()
        te.train(train_te)
    unet.train()


def _trace_step(cfg: TrainConfig, unet: torch.nn.Module, te: torch.nn.Module, train_te: bool,
                baseline: list[torch.Tensor], te2: torch.nn.Module | None = None) -> int:
    """Peak bytes created by one training step on fake tensors (inside the caller's FakeTensorMode).

    SDXL (`te2`): both encoders' hidden states side by side, plus the pooled text and size ids.
    """
    width, height = parse_resolution(cfg.resolution)
    batch, chunks = cfg.train_batch_size, max(1, (cfg.max_token_length or 75) // 75)
    dtype = weight_dtype(cfg)
    noisy = torch.empty(batch, unet.config.in_channels, height // 8, width // 8, dtype=dtype)
    target = torch.empty(batch, unet.config.out_channels, height // 8, width // 8)
    steps = torch.zeros(batch, dtype=torch.long)
    ids = torch.zeros(batch * chunks, TOKENS_PER_CHUNK, dtype=torch.long)
    width_te = te.config.hidden_size + (te2.config.hidden_size if te2 is not None else 0)
    cond = torch.empty(batch, TOKENS_PER_CHUNK * chunks, width_te, dtype=dtype)
    added = {}
    if te2 is not None:
        added = {"text_embeds": torch.empty(batch, te2.config.projection_dim, dtype=dtype),
                 "time_ids": torch.zeros(batch, 6, dtype=dtype)}
    # the float32 ops stay in force during backward: checkpointing recomputes under the forward's autocast state
    with LiveBytes(baseline + [noisy, target, steps, ids, cond, *added.values()]) as live, cuda_float32_norms():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not torch.float32):
            if train_te and te2 is None:
                cond = te(ids)[0].reshape(batch, -1, te.config.hidden_size)
            elif train_te:
                h1 = te(ids, output_hidden_states=True).hidden_states[-2]
                out2 = te2(ids, output_hidden_states=True)
                cond = torch.cat([h1, out2.hidden_states[-2]], dim=-1).reshape(batch, -1, width_te)
                added["text_embeds"] = out2.text_embeds.reshape(batch, -1)[:, :te2.config.projection_dim]
            extra = {"added_cond_kwargs": added} if added else {}
            pred = unet(noisy, steps, cond.to(dtype), **extra).sample
        loss = (pred.float() - target).pow(2).mean(dim=(1, 2, 3)).mean()
        loss.backward()
        del pred, loss, cond
    return live.peak


def _trace_vae_encode(vae: torch.nn.Module, batch: int, width: int, height: int, baseline: list[torch.Tensor]) -> int:
    """Peak bytes of one VAE encoding of `batch` images (float32, no gradients), as latent caching does it."""
    pixels = torch.empty(batch, vae.config.in_channels, height, width)
    with torch.no_grad(), LiveBytes(baseline + [pixels]) as live:
        vae.encode(pixels).latent_dist.sample()
    return live.peak


def trace_activations(cfg: TrainConfig, sk: Skeleton) -> tuple[int, int, int]:
    """(step peak with checkpointing as configured, with it flipped, one VAE encoding's peak) on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    unet, te, vae, network, te2 = sk.unet, sk.text_encoder, sk.vae, sk.network, sk.text_encoder_2
    encoders = [m for m in (te, te2) if m is not None]
    _, train_te = trained_parts(cfg, network)
    width, height = parse_resolution(cfg.resolution)
    with FakeTensorMode():
        for adapter in network.adapters:
            _fake_module(adapter, None)  # first, so the UNet's cast below leaves the LoRA dtype alone
        _fake_module(unet, weight_dtype(cfg))
        for encoder in encoders:
            _fake_module(encoder, weight_dtype(cfg))
        _fake_module(vae, torch.float32)
        for p in network.parameters():
            p.grad = torch.zeros_like(p) if p.requires_grad else None
        baseline = [t for m in (unet, *encoders, vae) for t in [*m.parameters(), *m.buffers()]]
        baseline += [p.grad for p in network.parameters() if p.grad is not None]
        peaks = {}
        for on in (cfg.gradient_checkpointing, not cfg.gradient_checkpointing):
            _set_checkpointing(unet, encoders, on, train_te)
            peaks[on] = _trace_step(cfg, unet, te, train_te, baseline, te2)
        vae_batch = cfg.vae_batch_size if cfg.cache_latents else cfg.train_batch_size
        vae_peak = _trace_vae_encode(vae, vae_batch, width, height, baseline)
    return peaks[cfg.gradient_checkpointing], peaks[not cfg.gradient_checkpointing], vae_peak


def estimate_vram(cfg: TrainConfig) -> VramEstimate:
    """The expected peak of torch.cuda.max_memory_allocated for a training run of `cfg`, by part."""
    sk = build_skeleton(cfg)
    params = trainable_parameters(cfg, sk.network)
    lora_bytes = storage_bytes(sk.network.parameters())
    grad_bytes = storage_bytes(params)
    opt_bytes, opt_note = optimizer_state_bytes(cfg, params, zero_initialised(sk.network))
    act, act_other, vae_peak = trace_activations(cfg, sk)
    _, train_te = trained_parts(cfg, sk.network)
    notes = []
    weights = {"unet": sk.weights["unet"]}
    if train_te or not getattr(cfg, "lowvram", False):
        weights["text_encoder"] = sk.weights["text_encoder"]
    else:
        notes.append("lowvram: the text encoder leaves the GPU after its outputs are cached")
    caching = 0
    if cfg.cache_latents:
        caching = sum(sk.weights.values()) + lora_bytes + vae_peak
        notes.append("cache_latents: the VAE is on the GPU only while latents are cached")
    else:
        weights["vae"] = sk.weights["vae"]
        act, act_other = max(act, vae_peak), max(act_other, vae_peak)
        notes.append("without cache_latents the VAE stays on the GPU and encodes every batch")
    if getattr(cfg, "fp8_base", False):
        notes.append("fp8_base: UNet Linear/Conv weights counted at 1 byte; the per-layer upcast is not traced")
    return VramEstimate(parse_resolution(cfg.resolution), cfg.train_batch_size, cfg.gradient_checkpointing, weights,
                        sk.weights["vae"], lora_bytes, sum(p.numel() for p in sk.network.parameters()), grad_bytes,
                        opt_bytes, opt_note, act, act_other, caching, notes=notes)
