"""network_args as sd-scripts (`networks.lora`) and LyCORIS (`lycoris.kohya`) take them, checked.

Torch-free, so the config validation (library.config_validate) and the network builder
(library.lora.from_config) share one parser: one list of keys per module, values typed,
ranges checked, and anything unknown named with a did-you-mean.
"""
from __future__ import annotations

import difflib
from typing import Any

from library.lora.blocks import block_lr_weights, block_ranks_check
from library.lora.metadata import parse_network_args

SD_SCRIPTS = "networks.lora"
LYCORIS = "lycoris.kohya"
_LORAPLUS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
_BLOCKS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
           "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold")
_COMMON_FLOAT = ("conv_alpha", "rank_dropout", "module_dropout", "dropout") + _LORAPLUS
_LYCORIS_BOOL = ("use_tucker", "use_cp", "use_conv_cp", "disable_conv_cp", "decompose_both", "full_matrix",
                 "dora_wd", "wd_on_output", "bypass_mode")
# LyCORIS switches we accept only at the value that leaves the network as we build it
_LYCORIS_NOOP = {"use_scalar": False, "train_norm": False, "rank_dropout_scale": False, "rs_lora": False,
                 "unbalanced_factorization": False}
KNOWN_ARGS = {
    SD_SCRIPTS: ("conv_dim",) + _COMMON_FLOAT + _BLOCKS,
    LYCORIS: ("conv_dim", "algo", "factor", "preset") + _COMMON_FLOAT + _LYCORIS_BOOL + tuple(_LYCORIS_NOOP),
}
ALGOS = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off", "", "none"):
        return False
    raise ValueError(f"{text!r} is not true or false")


def _unknown(key: str, module: str) -> str:
    known = KNOWN_ARGS[module]
    close = difflib.get_close_matches(key, known + tuple(a for m in KNOWN_ARGS.values() for a in m), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    if key in KNOWN_ARGS[LYCORIS] and module == SD_SCRIPTS:
        hint = f"; {key} is a LyCORIS option: use --network_module {LYCORIS}"
    elif key in _BLOCKS and module == LYCORIS:
        hint = f"; block-wise options belong to --network_module {SD_SCRIPTS}"
    return f"network_args {key}: not an option of {module}{hint}"


def wants_tucker(parsed: dict[str, Any]) -> bool:
    """LyCORIS' Tucker switch under any of its names (use_tucker, use_cp, use_conv_cp, disable_conv_cp=False)."""
    return bool(any(parsed.get(k) for k in ("use_tucker", "use_cp", "use_conv_cp"))
                or parsed.get("disable_conv_cp") is False)


def parse_args(module: str, raw: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Typed network_args for `module` and one problem line per bad entry."""
    parsed: dict[str, Any] = {}
    problems = []
    for key, value in raw.items():
        if key not in KNOWN_ARGS[module]:
            problems.append(_unknown(key, module))
            continue
        try:
            if key in _BLOCKS:
                parsed[key] = value  # parsed by library.lora.blocks
            elif value.lower() in ("", "none"):
                parsed[key] = None
            elif key in ("conv_dim", "factor"):
                parsed[key] = int(value)
            elif key in _COMMON_FLOAT:
                parsed[key] = float(value)
            elif key in _LYCORIS_BOOL or key in _LYCORIS_NOOP:
                parsed[key] = _bool(value)
            else:
                parsed[key] = value
        except ValueError:
            kind = "boolean" if key in _LYCORIS_BOOL or key in _LYCORIS_NOOP else "number"
            problems.append(f"network_args {key}={value!r}: not a {kind}")
    for key, fine in _LYCORIS_NOOP.items():
        if parsed.get(key, fine) != fine:
            problems.append(f"network_args {key}={raw[key]}: not supported by lorasmith; remove it or set it to {fine}")
    for key in ("rank_dropout", "module_dropout", "dropout"):
        if parsed.get(key) is not None and not 0 <= parsed[key] <= 1:
            problems.append(f"network_args {key}={raw[key]}: must be a number between 0 and 1")
    if parsed.get("conv_dim") is not None and parsed["conv_dim"] < 0:
        problems.append(f"network_args conv_dim={raw['conv_dim']}: must be a whole number >= 0")
    if module == SD_SCRIPTS:
        try:
            block_lr_weights(parsed)
            block_ranks_check(parsed)
        except ValueError as exc:
            problems.append(f"network_args: {exc}")
    if module == LYCORIS:
        if str(parsed.get("algo") or "lora").lower() not in ALGOS:
            problems.append(f"network_args algo={parsed['algo']}: lorasmith trains {', '.join(ALGOS)}")
        if str(parsed.get("preset") or "full") != "full":
            problems.append(f"network_args preset={parsed['preset']}: only LyCORIS' 'full' preset is supported")
    return parsed, problems


def check(module: str | None, items: list[str] | None) -> tuple[dict[str, Any], list[str]]:
    """(typed args, problems) for a config's network_module and network_args."""
    module = module or SD_SCRIPTS
    try:
        raw = parse_network_args(items)
    except ValueError as exc:
        return {}, [f"network_args: {exc}"]
    if module not in KNOWN_ARGS:
        return {}, [f"network_module {module}: lorasmith builds {SD_SCRIPTS} and {LYCORIS}"]
    return parse_args(module, raw)


EXAMPLES = {SD_SCRIPTS: "conv_dim=4 conv_alpha=1 loraplus_lr_ratio=16",
            LYCORIS: "algo=loha conv_dim=4 conv_alpha=1 dora_wd=True"}


def describe(module: str | None) -> tuple[str, str]:
    """(the network_args keys that apply to `module`, an example) for the form's network_args field."""
    module = module if module in KNOWN_ARGS else SD_SCRIPTS
    keys = [k for k in KNOWN_ARGS[module] if module != LYCORIS or k not in _LYCORIS_NOOP]
    return f"Options of {module} as key=value: {', '.join(keys)}", EXAMPLES[module]
