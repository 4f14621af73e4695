"""Building the training network from a TrainConfig (sd-scripts' network flags).

Reads, by sd-scripts' names: network_dim, network_alpha, network_dropout,
network_args ("conv_dim=4", "conv_alpha=1", "rank_dropout=0.1", "module_dropout=0.1"),
network_weights, dim_from_weights, network_train_unet_only,
network_train_text_encoder_only. Works with any object carrying those attributes.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from library.errors import ConfigError
from library.lora.metadata import parse_network_args
from library.lora.network import LoRANetwork

_INT_ARGS = ("conv_dim",)
_FLOAT_ARGS = ("conv_alpha", "rank_dropout", "module_dropout", "dropout")
_UNSUPPORTED = (
    "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight", "mid_lr_weight",
    "up_lr_weight", "block_lr_zero_threshold", "loraplus_lr_ratio", "loraplus_unet_lr_ratio",
    "loraplus_text_encoder_lr_ratio",
)


def network_options(config: Any) -> dict[str, Any]:
    """The keyword arguments of LoRANetwork.create from a config; ConfigError names bad entries."""
    try:
        raw = parse_network_args(getattr(config, "network_args", None))
    except ValueError as exc:
        raise ConfigError(f"network_args: {exc}") from None
    problems = []
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _UNSUPPORTED:
            problems.append(f"network_args {key}={value}: sd-scripts option not supported by lorasmith; remove it")
        elif key not in _INT_ARGS + _FLOAT_ARGS:
            known = ", ".join(_INT_ARGS + _FLOAT_ARGS)
            problems.append(f"network_args {key}={value}: unknown key (known: {known})")
        elif value.lower() in ("", "none"):
            parsed[key] = None
        else:
            try:
                parsed[key] = int(value) if key in _INT_ARGS else float(value)
            except ValueError:
                problems.append(f"network_args {key}={value!r}: not a number")
    unet_only = bool(getattr(config, "network_train_unet_only", False))
    te_only = bool(getattr(config, "network_train_text_encoder_only", False))
    if unet_only and te_only:
        problems.append("network_train_unet_only and network_train_text_encoder_only are both set; pick one")
    if getattr(config, "dim_from_weights", False) and not getattr(config, "network_weights", None):
        problems.append("dim_from_weights needs network_weights (the LoRA file to take the rank from)")
    if problems:
        raise ConfigError("the network options cannot be used", problems)
    dropout = parsed.pop("dropout", None)
    return {
        "rank": getattr(config, "network_dim", None) or 4,
        "alpha": getattr(config, "network_alpha", None),
        "conv_dim": parsed.get("conv_dim"),
        "conv_alpha": parsed.get("conv_alpha"),
        "dropout": getattr(config, "network_dropout", None) if dropout is None else dropout,
        "rank_dropout": parsed.get("rank_dropout"),
        "module_dropout": parsed.get("module_dropout"),
        "train_unet": not te_only,
        "train_text_encoder": not unet_only,
    }


def network_from_config(config: Any, unet: nn.Module, text_encoder: nn.Module) -> LoRANetwork:
    """The network sd-scripts' train_network.py would build for these flags (not yet applied)."""
    opts = network_options(config)
    weights = getattr(config, "network_weights", None)
    if weights and getattr(config, "dim_from_weights", False):
        return LoRANetwork.from_weights(
            weights, unet, text_encoder, train_unet=opts["train_unet"],
            train_text_encoder=opts["train_text_encoder"], dropout=opts["dropout"],
            rank_dropout=opts["rank_dropout"], module_dropout=opts["module_dropout"],
        )
    network = LoRANetwork.create(unet, text_encoder, **opts)
    if weights:
        network.load_weights(weights)
    return network
