"""The LoRA type picker (Standard / LoCon / LoHa / LoKr / DoRA, as kohya_ss names them).

A type is a network_module plus the network_args that make it (algo=loha,
dora_wd=True, conv_dim for LoCon); switching type keeps the user's args that
still apply and drops the rest.  Which keys apply comes from
library.lora.network_args (the same lists the trainer checks against).
"""
from __future__ import annotations

import shlex

from library.lora.network_args import KNOWN_ARGS, LYCORIS, SD_SCRIPTS, _LYCORIS_NOOP

LORA_TYPES = ("Standard", "LoCon", "LoHa", "LoKr", "DoRA")
MODULE = {"Standard": SD_SCRIPTS, "LoCon": SD_SCRIPTS, "LoHa": LYCORIS, "LoKr": LYCORIS, "DoRA": LYCORIS}
FIXED = {"Standard": {}, "LoCon": {}, "LoHa": {"algo": "loha"}, "LoKr": {"algo": "lokr"},
         "DoRA": {"algo": "lora", "dora_wd": "True"}}
DEFAULTS = {"LoCon": {"conv_dim": "4", "conv_alpha": "1"}, "LoHa": {"conv_dim": "4", "conv_alpha": "1"},
            "LoKr": {"factor": "-1"}}
DESCRIPTION = {
    "Standard": "sd-scripts LoRA on attention and linear layers (networks.lora)",
    "LoCon": "LoRA on the convolutions too (networks.lora with conv_dim, kohya_ss' \"Kohya LoCon\")",
    "LoHa": "LyCORIS Hadamard-product LoRA (lycoris.kohya algo=loha)",
    "LoKr": "LyCORIS Kronecker-product LoRA (lycoris.kohya algo=lokr)",
    "DoRA": "weight-decomposed LoRA (lycoris.kohya algo=lora dora_wd=True)",
}
_CONV_BLOCKS = ("conv_dim", "conv_alpha", "conv_block_dims", "conv_block_alphas")
_LYCO_COMMON = ("conv_dim", "conv_alpha", "rank_dropout", "module_dropout", "dropout", "loraplus_lr_ratio",
                "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio", "bypass_mode")


def applicable_args(kind: str) -> tuple[str, ...]:
    """The network_args keys the user may set for this type (the fixed ones excluded)."""
    if kind == "Standard":
        return tuple(k for k in KNOWN_ARGS[SD_SCRIPTS] if k not in _CONV_BLOCKS)
    if kind == "LoCon":
        return KNOWN_ARGS[SD_SCRIPTS]
    extra = {"LoHa": ("use_tucker",), "LoKr": ("factor", "decompose_both", "full_matrix", "use_tucker"),
             "DoRA": ("wd_on_output",)}[kind]
    keys = _LYCO_COMMON + extra
    return tuple(k for k in keys if k in KNOWN_ARGS[LYCORIS] and k not in _LYCORIS_NOOP)


def _items(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        parts = shlex.split(text or "")
    except ValueError:
        parts = (text or "").split()
    for part in parts:
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip()
    return out


def type_of(module: str | None, args_text: str | None) -> str:
    """Which picker entry a network_module + network_args pair is."""
    items = _items(args_text)
    if module == LYCORIS:
        algo = items.get("algo", "lora").lower()
        if algo == "loha":
            return "LoHa"
        if algo == "lokr":
            return "LoKr"
        if items.get("dora_wd", "").lower() in ("true", "1", "yes", "on"):
            return "DoRA"
        return "LoCon"
    return "LoCon" if "conv_dim" in items else "Standard"


def switch_type(kind: str, args_text: str | None) -> tuple[str, str, list[str]]:
    """(network_module, network_args text, dropped keys) for `kind`, keeping the args that still apply."""
    keep = applicable_args(kind)
    current = _items(args_text)
    new: dict[str, str] = {}
    dropped = []
    for key, value in current.items():
        if key in keep:
            new[key] = value
        elif key not in ("algo", "dora_wd"):
            dropped.append(key)
    for key, value in DEFAULTS.get(kind, {}).items():
        new.setdefault(key, value)
    new = {**FIXED[kind], **new}
    return MODULE[kind], " ".join(shlex.quote(f"{k}={v}") for k, v in new.items()), dropped


def hint(kind: str) -> str:
    """The line under the picker: what the type is and the only args that apply to it."""
    fixed = " ".join(f"{k}={v}" for k, v in FIXED[kind].items())
    fixed_text = f" (set for you: {fixed})" if fixed else ""
    return (f"**{kind}** — {DESCRIPTION[kind]}{fixed_text}.  \nnetwork_args that apply: "
            + ", ".join(f"`{k}`" for k in applicable_args(kind)))
