"""Building the training network from a TrainConfig (sd-scripts' and LyCORIS' network flags).

Reads, by sd-scripts' names: network_module, network_dim, network_alpha, network_dropout,
network_args, network_weights, dim_from_weights, network_train_unet_only,
network_train_text_encoder_only. Works with any object carrying those attributes.

network_args by module:
- `networks.lora` (sd-scripts): conv_dim, conv_alpha, dropout, rank_dropout, module_dropout,
  block_dims, block_alphas, conv_block_dims, conv_block_alphas, down/mid/up_lr_weight,
  block_lr_zero_threshold, loraplus_lr_ratio, loraplus_unet_lr_ratio, loraplus_text_encoder_lr_ratio;
- `lycoris.kohya` (LyCORIS): algo (lora, locon, loha, lokr), conv_dim and conv_alpha (default:
  network_dim and network_alpha, as LyCORIS), dropout, rank_dropout, module_dropout, use_tucker
  (or use_cp / use_conv_cp / disable_conv_cp=False), factor, decompose_both, full_matrix,
  dora_wd, wd_on_output, preset (full), the LoRA+ ratios, and LyCORIS switches accepted at
  the value that changes nothing here (use_scalar, train_norm, rank_dropout_scale, rs_lora,
  unbalanced_factorization false; bypass_mode any: our wrapper already runs the bypass form).
Anything else is a ConfigError naming the key, with a did-you-mean.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from library.errors import ConfigError
from library.lora.blocks import block_lr_weights, block_ranks
from library.lora.naming import is_sdxl_unet
from library.lora.network import LoRANetwork
from library.lora.network_args import ALGOS, LYCORIS, SD_SCRIPTS, check, wants_tucker


def _lycoris_options(parsed: dict[str, Any], dim: int, alpha: float | None) -> dict[str, Any]:
    algo = ALGOS[str(parsed.get("algo") or "lora").lower()]
    tucker = wants_tucker(parsed)
    algo_options: dict[str, Any] = {}
    if algo in ("lora", "loha"):
        algo_options = {"use_tucker": tucker}
    elif algo == "lokr":
        algo_options = {"use_tucker": tucker, "factor": parsed.get("factor") or -1,
                        "decompose_both": bool(parsed.get("decompose_both")),
                        "full_matrix": bool(parsed.get("full_matrix"))}
    return {
        "algo": algo, "algo_options": algo_options, "lycoris_targets": True,
        "dora_wd": bool(parsed.get("dora_wd")),
        "wd_on_output": True if parsed.get("wd_on_output") is None else parsed["wd_on_output"],
        "conv_dim": parsed.get("conv_dim") or dim,
        "conv_alpha": parsed.get("conv_alpha") or alpha,
    }


def network_options(config: Any, sdxl: bool = False) -> dict[str, Any]:
    """The keyword arguments of LoRANetwork.create from a config; ConfigError names bad entries.

    Also returns `loraplus` (unet ratio, text-encoder ratio) and `block_lr_weights`, which
    the network keeps for prepare_optimizer_params. `sdxl`: block-wise options use SDXL's 23 blocks.
    """
    module = getattr(config, "network_module", None) or SD_SCRIPTS
    parsed, problems = check(module, getattr(config, "network_args", None))
    unet_only = bool(getattr(config, "network_train_unet_only", False))
    te_only = bool(getattr(config, "network_train_text_encoder_only", False))
    if unet_only and te_only:
        problems.append("network_train_unet_only and network_train_text_encoder_only are both set; pick one")
    if getattr(config, "dim_from_weights", False) and not getattr(config, "network_weights", None):
        problems.append("dim_from_weights needs network_weights (the LoRA file to take the rank from)")
    dim = getattr(config, "network_dim", None) or 4
    alpha = getattr(config, "network_alpha", None)
    opts: dict[str, Any] = {"conv_dim": parsed.get("conv_dim"), "conv_alpha": parsed.get("conv_alpha")}
    if module == LYCORIS and not problems:
        opts = _lycoris_options(parsed, dim, alpha)
    lr_weights = None
    if module == SD_SCRIPTS and not problems:
        try:
            lr_weights = block_lr_weights(parsed, sdxl)
            opts["block_ranks"] = block_ranks(parsed, dim, 1.0 if alpha is None else alpha, parsed.get("conv_dim"),
                                              parsed.get("conv_alpha"), lr_weights, sdxl)
        except ValueError as exc:
            problems.append(f"{exc} for this {'SDXL' if sdxl else 'SD1.x/SD2.x'} model")
    if problems:
        raise ConfigError("the network options cannot be used", problems)
    dropout = parsed.get("dropout")
    ratio = parsed.get("loraplus_lr_ratio")
    return {
        **opts,
        "rank": dim,
        "alpha": alpha,
        "dropout": getattr(config, "network_dropout", None) if dropout is None else dropout,
        "rank_dropout": parsed.get("rank_dropout"),
        "module_dropout": parsed.get("module_dropout"),
        "train_unet": not te_only,
        "train_text_encoder": not unet_only,
        "loraplus": (parsed.get("loraplus_unet_lr_ratio") or ratio,
                     parsed.get("loraplus_text_encoder_lr_ratio") or ratio),
        "block_lr_weights": lr_weights,
    }


def network_from_config(config: Any, unet: nn.Module, text_encoder: nn.Module | Sequence[nn.Module]) -> LoRANetwork:
    """The network sd-scripts' train_network.py would build for these flags (not yet applied).

    `text_encoder`: one module, or SDXL's (te1, te2).
    """
    opts = network_options(config, sdxl=is_sdxl_unet(unet))
    loraplus, lr_weights = opts.pop("loraplus"), opts.pop("block_lr_weights")
    weights = getattr(config, "network_weights", None)
    if weights and getattr(config, "dim_from_weights", False):
        network = LoRANetwork.from_weights(
            weights, unet, text_encoder, train_unet=opts["train_unet"],
            train_text_encoder=opts["train_text_encoder"], dropout=opts["dropout"],
            rank_dropout=opts["rank_dropout"], module_dropout=opts["module_dropout"],
        )
    else:
        network = LoRANetwork.create(unet, text_encoder, **opts)
        if weights:
            network.load_weights(weights)
    network.loraplus = loraplus
    network.block_lr_weights = lr_weights
    return network
