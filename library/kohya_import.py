"""Import a kohya_ss GUI JSON config (flat keys, numbers as strings) into a TrainConfig.

The GUI stores its form, not sd-scripts flags: `epoch` for max_train_epochs,
`max_resolution` "768,768", `lr_warmup` as a percent of all steps, `xformers`
"xformers"/"sdpa", `optimizer_args` as one space-separated string, and empty
strings for unset values. This table maps each key; GUI-only keys are listed as
ignored, and anything we cannot honour is listed as unmapped instead of being
silently dropped.
"""
from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library.config import TrainConfig, option_fields
from library.config_io import add_config_arguments, cli_overrides, config_from_mapping
from library.errors import ConfigError

# Keys whose value goes to the TrainConfig field of the same name.
_SAME_NAME = {f.name for f in option_fields()}

# Keys that only steer the GUI or its launcher; they change nothing in training.
GUI_ONLY_KEYS = {
    "model_list", "num_cpu_threads_per_process", "use_wandb", "wandb_api_key", "wandb_run_name",
    "train_on_input", "unit",
    "noise_offset_type", "save_last_n_steps_state",
    "lr_scheduler_args", "sample_every_n_epochs_default", "log_tracker_name", "log_tracker_config",
}

_NEUTRAL_WHEN_FALSEY = {
    "weighted_captions", "no_token_padding", "stop_text_encoder_training",
}

# kohya_ss LoRA_type -> (network_module, LyCORIS algo); kohya_ss itself sends "LoCon" to LyCORIS
_LORA_TYPES = {
    "Standard": ("networks.lora", None), "Kohya LoCon": ("networks.lora", None),
    "LoCon": ("lycoris.kohya", "locon"), "LyCORIS/LoCon": ("lycoris.kohya", "locon"),
    "LyCORIS/LoHa": ("lycoris.kohya", "loha"), "LyCORIS/LoKr": ("lycoris.kohya", "lokr"),
}
# network keys of the kohya_ss form and the network_args they become (kohya_ss lora_gui.py)
_BLOCK_KEYS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
               "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold")
_LORAPLUS_KEYS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
_LYCORIS_SWITCHES = ("dora_wd", "use_tucker", "use_cp", "decompose_both")
_LYCORIS_UNSUPPORTED = ("use_scalar", "rank_dropout_scale", "train_norm")
_NETWORK_KEYS = set(_BLOCK_KEYS + _LORAPLUS_KEYS + _LYCORIS_SWITCHES + _LYCORIS_UNSUPPORTED) | {
    "conv_dim", "conv_alpha", "rank_dropout", "module_dropout", "factor", "LyCORIS_preset", "bypass_mode"}

# Paths a training run cannot do without; a kohya placeholder left in one is an error.
REQUIRED_PATHS = ("pretrained_model_name_or_path", "train_data_dir", "output_dir")


@dataclass
class KohyaImport:
    """What the import produced and what the user should look at."""

    config: TrainConfig
    mapped: dict[str, str] = field(default_factory=dict)  # kohya key -> what it became
    ignored: list[str] = field(default_factory=list)  # GUI-only keys
    unmapped: list[str] = field(default_factory=list)  # settings lorasmith cannot honour
    placeholders: dict[str, str] = field(default_factory=dict)  # field -> "<path to …>"
    sample_prompts_text: str | None = None

    def finish(self, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
        """The config to train with: command-line values applied first, then the checks.

        A required path the file left as a placeholder (and nothing overrode) is
        kept as that placeholder, so validation names the field and the
        placeholder in one list with every other problem. Inline sample prompts
        are written under output_dir only when the config passes validation.
        """
        if overrides:
            self.config = dataclasses.replace(self.config, **overrides)
        missing = {name: text for name, text in self.placeholders.items()
                   if name in REQUIRED_PATHS and not getattr(self.config, name)}
        if missing:
            self.config = dataclasses.replace(self.config, **missing)
        if overrides and "sample_prompts" in overrides:
            return self.config  # the command line's prompt file wins over the file's inline prompts
        if not self.config.output_dir or _is_placeholder(self.config.output_dir):
            return self.config
        from library.config_validate import check_config

        if check_config(self.config).errors:
            return self.config  # nothing is written for a run that validation will stop
        return self.materialize_sample_prompts()

    def materialize_sample_prompts(self, folder: str | Path | None = None) -> TrainConfig:
        """kohya_ss keeps sample prompts inline; write them to a file as it does.

        Default place: <output_dir>/sample/prompt.txt, like the kohya_ss GUI.
        """
        if not self.sample_prompts_text:
            return self.config
        from library.fileio import atomic_write_text

        if folder is None:
            if not self.config.output_dir:
                raise ConfigError("the kohya_ss config has sample prompts but no output_dir to keep them in", ["set output_dir"])
            folder = Path(self.config.output_dir) / "sample"
        path = Path(folder) / "prompt.txt"
        atomic_write_text(path, self.sample_prompts_text.rstrip("\n") + "\n")
        self.config = dataclasses.replace(self.config, sample_prompts=str(path))
        return self.config

    def summary(self) -> str:
        lines = [f"Mapped {len(self.mapped)} settings:"]
        lines += [f"  {k} -> {v}" for k, v in self.mapped.items()]
        if self.placeholders:
            lines.append("Paths still to fill in:")
            lines += [f"  {k}: {v}" for k, v in self.placeholders.items()]
        if self.ignored:
            lines.append(f"Ignored (kohya_ss GUI only): {', '.join(self.ignored)}")
        if self.unmapped:
            lines.append("Could not map (lorasmith has no equivalent; the run would differ):")
            lines += [f"  {u}" for u in self.unmapped]
        return "\n".join(lines)


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _is_placeholder(value: Any) -> bool:
    return isinstance(value, str) and value.strip().startswith("<") and value.strip().endswith(">")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "0.0", "false", "none")
    return bool(value)


Handler = Callable[[Any, dict[str, Any], "KohyaImport"], None]


def _set(name: str) -> Handler:
    def handle(value: Any, out: dict[str, Any], result: KohyaImport) -> None:
        out[name] = value

    return handle


def _epoch(value: Any, out: dict[str, Any], result: KohyaImport) -> None:
    out["max_train_epochs"] = value


def _max_resolution(value: Any, out: dict[str, Any], result: KohyaImport) -> None:
    out["resolution"] = str(value).replace(" ", "")


def _lr_warmup(value: Any, out: dict[str, Any], result: KohyaImport) -> None:
    pct = float(value)
    if pct:
        # kohya_ss: percent of all steps; lorasmith reads a value below 1 as a ratio.
        out["lr_warmup_steps"] = pct / 100.0


def _optimizer_args(value: Any, out: dict[str, Any], result: KohyaImport) -> None:
    out["optimizer_args"] = shlex.split(str(value))


def _xformers(value: Any, out: dict[str, Any], result: KohyaImport) -> None:
    """xformers when installed; otherwise PyTorch SDPA, which does the same job."""
    import importlib.util

    mode = str(value).strip().lower()
    if mode in ("xformers", "true") and importlib.util.find_spec("xformers") is not None:
        out["xformers"] = True
    elif mode in ("xformers", "true", "sdpa"):
        out["sdpa"] = True


def _max_token_length(value: Any, out: dict[str, Any], result: KohyaImport) -> None:
    n = int(float(value))
    if n != 75:
        out["max_token_length"] = n


def _caption_extension(value: Any, out: dict[str, Any], result: KohyaImport) -> None:
    out["caption_extension"] = value


def _sample_prompts(value: Any, out: dict[str, Any], result: KohyaImport) -> None:
    text = str(value)
    if Path(text).suffix.lower() in (".txt", ".toml", ".json") and "\n" not in text:
        out["sample_prompts"] = text
    else:
        result.sample_prompts_text = text


_HANDLERS: dict[str, Handler] = {
    "epoch": _epoch,
    "max_resolution": _max_resolution,
    "lr_warmup": _lr_warmup,
    "optimizer": _set("optimizer_type"),
    "optimizer_args": _optimizer_args,
    "xformers": _xformers,
    "max_token_length": _max_token_length,
    "caption_extension": _caption_extension,
    "lora_network_weights": _set("network_weights"),
    "sample_prompts": _sample_prompts,
    "additional_parameters": lambda v, out, r: out.setdefault("_additional", str(v)),
}


# kohya_ss GUI keys for SDXL: `sdxl` picks sdxl_train_network.py; the others become its flags
_SDXL_KEYS = {"sdxl": None, "sdxl_no_half_vae": "no_half_vae", "sdxl_cache_text_encoder_outputs": "cache_text_encoder_outputs"}


def _sdxl_key(key: str, value: Any, sdxl: bool, out: dict[str, Any], result: KohyaImport) -> None:
    """`sdxl: true` needs no flag (the family is read from the model); sdxl_* options apply only with it, as in kohya_ss."""
    if key == "sdxl":
        if _truthy(value):
            result.mapped[key] = "SDXL (the model's family is detected from the model; sdxl_train_network.py)"
        return
    if not sdxl:
        result.ignored.append(key)
        return
    if _truthy(value):
        out[_SDXL_KEYS[key]] = True
        result.mapped[key] = _SDXL_KEYS[key]


def import_kohya_config(
    data: Mapping[str, Any], *, source: str = "kohya_ss config", base: TrainConfig | None = None
) -> KohyaImport:
    """Map a kohya_ss GUI JSON mapping onto a TrainConfig (see module docstring)."""
    result = KohyaImport(config=base or TrainConfig())
    out: dict[str, Any] = {}
    module, network_args = _network(data, result)
    if module != "networks.lora":
        out["network_module"] = module
    sdxl = _truthy(data.get("sdxl"))
    for key, value in data.items():
        if key == "LoRA_type" or key in _NETWORK_KEYS:
            continue
        if key in _SDXL_KEYS:  # kohya_ss' SDXL checkbox and the options it only passes on for SDXL
            _sdxl_key(key, value, sdxl, out, result)
            continue
        if key in GUI_ONLY_KEYS:
            result.ignored.append(key)
            continue
        if key in _NEUTRAL_WHEN_FALSEY:
            if _truthy(value):
                result.unmapped.append(f"{key} = {value!r} (not supported)")
            continue
        if key in ("multires_noise_iterations", "multires_noise_discount") and str(data.get("noise_offset_type", "Original")) != "Multires":
            continue
        if key in ("noise_offset", "adaptive_noise_scale") and str(data.get("noise_offset_type", "Original")) == "Multires":
            continue
        if _is_empty(value):
            continue
        if _is_placeholder(value):
            target = _target_name(key)
            result.placeholders[target or key] = str(value)
            continue
        if key in _HANDLERS:
            _HANDLERS[key](value, out, result)
            result.mapped[key] = _describe(key)
        elif key in _SAME_NAME:
            if key in ("network_dropout", "adaptive_noise_scale", "multires_noise_iterations", "scale_weight_norms", "noise_offset", "min_snr_gamma") and not _truthy(value):
                continue  # kohya_ss writes 0 for "off"; sd-scripts means None
            if key in ("vae_batch_size", "save_every_n_steps", "sample_every_n_steps", "save_last_n_steps", "sample_every_n_epochs", "save_every_n_epochs") and not _truthy(value):
                continue
            out[key] = value
            result.mapped[key] = key
        else:
            result.unmapped.append(f"{key} = {value!r} (unknown kohya_ss key)")
    if network_args:
        out["network_args"] = network_args
    additional = out.pop("_additional", None)
    cfg = config_from_mapping(out, source=source, base=result.config)
    if additional:
        cfg = _apply_additional(cfg, additional, source, result)
    result.config = cfg
    return result


def _describe(key: str) -> str:
    return {
        "epoch": "max_train_epochs", "max_resolution": "resolution", "lr_warmup": "lr_warmup_steps",
        "optimizer": "optimizer_type", "optimizer_args": "optimizer_args", "xformers": "xformers/sdpa",
        "max_token_length": "max_token_length", "caption_extension": "caption_extension",
        "lora_network_weights": "network_weights", "sample_prompts": "sample_prompts",
        "additional_parameters": "extra flags",
    }[key]


def _target_name(key: str) -> str | None:
    if key in _SAME_NAME:
        return key
    return {"lora_network_weights": "network_weights"}.get(key)


def _network(data: Mapping[str, Any], result: KohyaImport) -> tuple[str, list[str]]:
    """network_module and network_args for the form's LoRA_type and its network fields."""
    kind = str(data.get("LoRA_type", "Standard"))
    if kind not in _LORA_TYPES:
        result.unmapped.append(f"LoRA_type = {kind!r} (lorasmith trains {', '.join(_LORA_TYPES)})")
        kind = "Standard"
    module, algo = _LORA_TYPES[kind]
    args = [f"algo={algo}"] if algo else []
    result.mapped["LoRA_type"] = f"network_module {module}" + (f" algo={algo}" if algo else "")

    def add(key: str, arg: str) -> None:
        args.append(arg)
        result.mapped[key] = f"network_args {arg}"

    for key in ("conv_dim", "conv_alpha"):
        if (algo or kind == "Kohya LoCon") and not _is_empty(data.get(key)):
            add(key, f"{key}={data[key]}")
    for key in ("rank_dropout", "module_dropout") + _LORAPLUS_KEYS:
        if _truthy(data.get(key)):
            add(key, f"{key}={data[key]}")
    for key in _BLOCK_KEYS:
        if not _is_empty(data.get(key)):
            if algo:
                result.unmapped.append(f"{key} = {data[key]!r} (block-wise settings apply to Standard / Kohya LoCon)")
            else:
                add(key, f"{key}={data[key]}")
    if algo:
        _lycoris_fields(data, algo, add, result)
    return module, args


def _lycoris_fields(data: Mapping[str, Any], algo: str, add: Callable[[str, str], None], result: KohyaImport) -> None:
    """dora_wd, use_tucker/use_cp, factor, decompose_both, preset; LyCORIS switches we lack are listed."""
    for key in _LYCORIS_SWITCHES:
        if _truthy(data.get(key)) and (algo == "lokr" or key not in ("use_cp", "decompose_both")):
            add(key, f"{'use_tucker' if key == 'use_cp' else key}=True")
    if algo == "lokr" and not _is_empty(data.get("factor")) and str(data["factor"]) not in ("-1", "-1.0"):
        add("factor", f"factor={int(float(data['factor']))}")
    preset = data.get("LyCORIS_preset")
    if not _is_empty(preset) and str(preset) != "full":
        result.unmapped.append(f"LyCORIS_preset = {preset!r} (lorasmith applies LyCORIS' 'full' preset)")
    for key in _LYCORIS_UNSUPPORTED:
        if _truthy(data.get(key)):
            result.unmapped.append(f"{key} = {data[key]!r} (not supported)")


def _apply_additional(cfg: TrainConfig, text: str, source: str, result: KohyaImport) -> TrainConfig:
    """kohya_ss appends `additional_parameters` to the command: parse them as flags."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add_config_arguments(parser)
    try:
        args, unknown = parser.parse_known_args(shlex.split(text))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ConfigError(f"{source}: additional_parameters {text!r} cannot be read: {exc}") from None
    for flag in unknown:
        result.unmapped.append(f"additional_parameters: {flag}")
    overrides = cli_overrides(args)
    result.mapped["additional_parameters"] = ", ".join(overrides) or "(nothing)"
    return dataclasses.replace(cfg, **overrides)
