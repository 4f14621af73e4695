"""Optimizers by sd-scripts name (case-insensitive) or dotted class path.

`build_optimizer` returns the optimizer plus what the metadata and the logs
need: the `ss_optimizer` string ("module.Class(k=v,...)") and whether the
optimizer adapts its own step size (D-Adaptation, Prodigy: log d·lr).
"""
from __future__ import annotations

import contextlib
import importlib
import io
from dataclasses import dataclass, field
from typing import Any

import torch

from library.config import parse_key_value_args
from library.errors import ConfigError

# lower-case name -> (module, class, default kwargs)
_REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "adamw": ("torch.optim", "AdamW", {}),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", {}),
    "pagedadamw8bit": ("bitsandbytes.optim", "PagedAdamW8bit", {}),
    "lion8bit": ("bitsandbytes.optim", "Lion8bit", {}),
    "sgdnesterov8bit": ("bitsandbytes.optim", "SGD8bit", {"nesterov": True, "momentum": 0.9}),
    "sgdnesterov": ("torch.optim", "SGD", {"nesterov": True, "momentum": 0.9}),
    "lion": ("library.training.lion", "Lion", {}),
    "dadaptation": ("dadaptation.experimental", "DAdaptAdamPreprint", {}),
    "dadaptadamprepr": ("dadaptation.experimental", "DAdaptAdamPreprint", {}),
    "dadaptadam": ("dadaptation", "DAdaptAdam", {}),
    "dadaptadagrad": ("dadaptation", "DAdaptAdaGrad", {}),
    "dadaptadan": ("dadaptation", "DAdaptAdan", {}),
    "dadaptadanip": ("dadaptation.experimental", "DAdaptAdanIP", {}),
    "dadaptlion": ("dadaptation", "DAdaptLion", {}),
    "dadaptsgd": ("dadaptation", "DAdaptSGD", {}),
    "prodigy": ("prodigyopt", "Prodigy", {}),
    "adafactor": ("transformers.optimization", "Adafactor", {}),
}


# These check at their first step that every group has the same lr (or 0) and raise otherwise.
SINGLE_LR_CLASSES = ("DAdaptAdam", "DAdaptLion", "DAdaptSGD", "DAdaptAdamPreprint", "Prodigy")


def check_group_lrs(optimizer_type: str, unet_lr: float | None, text_encoder_lr: float | None,
                    learning_rate: float, train_unet: bool = True, train_text_encoder: bool = True) -> None:
    """Refuse, before any model is loaded, lr combinations the optimizer would reject at step 1."""
    entry = _REGISTRY.get(optimizer_type.lower())
    if entry is None or entry[1] not in SINGLE_LR_CLASSES:
        return
    lrs = {name: lr for name, lr, used in (("unet_lr", unet_lr, train_unet), ("text_encoder_lr", text_encoder_lr, train_text_encoder))
           if used for lr in [learning_rate if lr is None else lr] if lr}
    if len(set(lrs.values())) > 1:
        shown = ", ".join(f"{k} {v}" for k, v in lrs.items())
        raise ConfigError(f"{optimizer_type} uses one learning rate for all parameters, but {shown} differ", [
            "set unet_lr and text_encoder_lr to the same value (1.0 is usual), or text_encoder_lr 0 to freeze the text encoder"])


def is_adaptive_name(optimizer_type: str) -> bool:
    """sd-scripts logs d·lr for names starting with DAdapt and for Prodigy."""
    name = optimizer_type.lower()
    return name.startswith("dadapt") or name == "prodigy"


@dataclass
class OptimizerChoice:
    optimizer: torch.optim.Optimizer
    class_path: str
    kwargs: dict[str, Any]
    adaptive: bool
    adafactor_initial_lr: float | None = None  # set when Adafactor computes its own relative step
    notes: list[str] = field(default_factory=list)

    @property
    def description(self) -> str:
        """sd-scripts' `ss_optimizer`: 'torch.optim.adamw.AdamW' or 'module.Class(k=v,k=v)'."""
        args = ",".join(f"{k}={v}" for k, v in self.kwargs.items())
        return self.class_path + (f"({args})" if args else "")


def resolve_class(optimizer_type: str) -> tuple[type, dict[str, Any]]:
    """The optimizer class and its default kwargs; ConfigError when it cannot be imported."""
    key = optimizer_type.lower()
    if key in _REGISTRY:
        module_name, class_name, defaults = _REGISTRY[key]
    elif "." in optimizer_type:
        module_name, _, class_name = optimizer_type.rpartition(".")
        defaults = {}
    else:
        raise ConfigError(f"optimizer_type: {optimizer_type!r} is unknown", [
            "use AdamW, AdamW8bit, DAdaptAdam, Prodigy, Lion, SGDNesterov, AdaFactor or a dotted class path"])
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if module_name.startswith("bitsandbytes"):
            raise ConfigError(f"optimizer_type {optimizer_type}: bitsandbytes cannot be loaded on this platform ({exc})", [
                "use --optimizer_type AdamW (same algorithm, 32-bit states), or install a bitsandbytes build for your GPU"]) from None
        raise ConfigError(f"optimizer_type {optimizer_type}: module {module_name!r} cannot be imported ({exc})", [
            f"install the package that provides {module_name}, or pick another optimizer"]) from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer_type {optimizer_type}: {module_name}.{class_name} is not an optimizer class")
    return cls, dict(defaults)


def _adafactor_kwargs(kwargs: dict[str, Any], param_groups: list[dict[str, Any]], lr: float,
                      notes: list[str]) -> tuple[float | None, float | None]:
    """sd-scripts' Adafactor rule: relative_step (default True) means Adafactor picks the step size.

    Returns (lr passed to the optimizer, initial lr for the Adafactor schedule).
    """
    kwargs.setdefault("relative_step", True)
    if not kwargs["relative_step"] and kwargs.get("warmup_init", False):
        notes.append("AdaFactor: warmup_init=True needs relative_step, so relative_step is on")
        kwargs["relative_step"] = True
    if not kwargs["relative_step"]:
        return lr, None
    if any(g.pop("lr", None) is not None for g in param_groups):
        notes.append("AdaFactor with relative_step: unet_lr and text_encoder_lr are ignored")
    notes.append(f"AdaFactor with relative_step: learning_rate {lr} is the initial lr of the Adafactor schedule")
    return None, lr


def build_optimizer(optimizer_type: str, optimizer_args: list[str], param_groups: list[dict[str, Any]],
                    learning_rate: float) -> OptimizerChoice:
    """Make the optimizer named by `optimizer_type` over `param_groups` (each may carry its own lr)."""
    cls, kwargs = resolve_class(optimizer_type)
    kwargs.update(parse_key_value_args(optimizer_args, "optimizer_args"))
    notes: list[str] = []
    lr: float | None = learning_rate
    initial_lr = None
    if optimizer_type.lower() == "adafactor":
        lr, initial_lr = _adafactor_kwargs(kwargs, param_groups, learning_rate, notes)
    if is_adaptive_name(optimizer_type):
        lrs = {g.get("lr", learning_rate) for g in param_groups}
        if len(lrs) > 1:
            notes.append(f"{optimizer_type}: the learning rates differ between groups ({sorted(lrs)}); "
                         "they multiply one shared adapted step size d")
    run_kwargs = {**kwargs, **speed_kwargs(cls, kwargs, _device_type(param_groups))}
    try:
        optimizer = _construct_quietly(cls, param_groups, lr, run_kwargs)
    except TypeError as exc:
        raise ConfigError(f"optimizer_args for {cls.__module__}.{cls.__name__}: {exc}", [
            "remove or rename the argument; see the optimizer's documentation for accepted names"]) from None
    except ValueError as exc:
        raise ConfigError(f"optimizer_args for {cls.__name__}: {exc}") from None
    return OptimizerChoice(
        optimizer=optimizer, class_path=f"{cls.__module__}.{cls.__name__}", kwargs=kwargs,
        adaptive=is_adaptive_name(optimizer_type), adafactor_initial_lr=initial_lr, notes=notes)


# torch optimizers with a fused CUDA kernel (one launch for all tensors, and the loss scaler's
# skip-on-overflow without a host read-back: `_step_supports_amp_scaling`).
FUSED_CLASSES = ("Adam", "AdamW")


def _device_type(param_groups: list[dict[str, Any]]) -> str:
    for group in param_groups:
        for p in group["params"]:
            return p.device.type
    return "cpu"


def speed_kwargs(cls: type, kwargs: dict[str, Any], device_type: str) -> dict[str, Any]:
    """How a torch optimizer should run its update here; nothing when the user chose foreach/fused.

    CUDA: fused Adam/AdamW (one kernel for every LoRA tensor, and fp16 loss scaling with no
    host sync); CPU: foreach, bitwise identical to torch's per-tensor loop and faster for
    hundreds of small tensors. Not recorded in ss_optimizer: neither changes the algorithm.
    """
    if not cls.__module__.startswith("torch.optim") or {"foreach", "fused"} & set(kwargs):
        return {}
    if device_type == "cuda" and cls.__name__ in FUSED_CLASSES:
        return {"fused": True}
    return {"foreach": True}
# What optimizer constructors print about options the plan and the metadata already show.
_CONSTRUCTOR_CHATTER = ("Using decoupled weight decay",)


def _construct_quietly(cls: type, param_groups: list[dict[str, Any]], lr: float | None,
                       kwargs: dict[str, Any]) -> torch.optim.Optimizer:
    """`cls(param_groups, lr=…, **kwargs)` without DAdaptation's print() of its own options."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        optimizer = cls(param_groups, lr=lr, **kwargs) if lr is not None else cls(param_groups, **kwargs)
    for line in printed.getvalue().splitlines():
        if line.strip() not in _CONSTRUCTOR_CHATTER:
            print(line)
    return optimizer


def d_times_lr(optimizer: torch.optim.Optimizer, group: int) -> float | None:
    """The effective step size d·lr of an adaptive optimizer's param group (None if it has no d)."""
    g = optimizer.param_groups[group]
    if "d" not in g:
        return None
    return float(g["d"]) * float(g["lr"])
