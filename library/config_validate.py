"""Checks a `TrainConfig` before anything heavy happens.

Every problem is collected and raised together in one `ConfigError`, each
line naming the field, the value and the fix; warnings are returned so the
caller can print them (CLI) or show them beside the field (GUI).
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from library.config import (
    MAX_RESOLUTION,
    BUILTIN_MODEL_NAMES,
    TrainConfig,
    base_type,
    is_optional,
    option_fields,
    parse_key_value_args,
    number_problem,
    parse_resolution,
    spec_of,
)
from library.errors import ConfigError, LorasmithError

ADAPTIVE_OPTIMIZERS = ("dadapt", "prodigy")
KNOWN_OPTIMIZERS = (
    "adamw", "adamw8bit", "pagedadamw8bit", "dadaptation", "dadaptadam", "dadaptadagrad",
    "dadaptadan", "dadaptadanip", "dadaptlion", "dadaptsgd", "dadaptadamprepr", "prodigy",
    "lion", "lion8bit", "sgdnesterov", "sgdnesterov8bit", "adafactor",
)


@dataclass
class Issue:
    """One validation finding, attached to a field so the GUI can place it."""

    field: str
    message: str


@dataclass
class ValidationReport:
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    def error(self, name: str, message: str) -> None:
        self.errors.append(Issue(name, f"{name}: {message}"))

    def warn(self, name: str, message: str) -> None:
        self.warnings.append(Issue(name, f"{name}: {message}"))

    def raise_if_errors(self, what: str = "The training config has problems") -> None:
        if self.errors:
            raise ConfigError(what, [i.message for i in self.errors])


def check_config(cfg: TrainConfig, *, for_training: bool = True) -> ValidationReport:
    """All checks; never raises (the GUI calls this on every edit)."""
    rep = ValidationReport()
    _check_types_and_ranges(cfg, rep)
    _check_resolution_and_buckets(cfg, rep)
    _check_contradictions(cfg, rep)
    _check_workers(cfg, rep)
    _check_alpha_background(cfg, rep)
    _check_optimizer(cfg, rep)
    _check_network_args(cfg, rep)
    _check_saving(cfg, rep)
    _check_ema(cfg, rep)
    if for_training:
        _check_required(cfg, rep)
        _check_paths(cfg, rep)
    return rep


def validate(cfg: TrainConfig, *, for_training: bool = True) -> list[str]:
    """Raise one ConfigError listing every problem; return warning lines."""
    rep = check_config(cfg, for_training=for_training)
    rep.raise_if_errors()
    return [w.message for w in rep.warnings]


def _check_types_and_ranges(cfg: TrainConfig, rep: ValidationReport) -> None:
    for f in option_fields():
        value = getattr(cfg, f.name)
        spec = spec_of(f)
        if value is None:
            if not is_optional(f.name):
                rep.error(f.name, "must be set")
            continue
        want = base_type(f.name)
        ok = (
            (want is bool and isinstance(value, bool))
            or (want is int and isinstance(value, int) and not isinstance(value, bool))
            or (want is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (want is str and isinstance(value, str))
            or (want is list and isinstance(value, list) and all(isinstance(v, str) for v in value))
        )
        if not ok:
            rep.error(f.name, f"{value!r} is not a {want.__name__}")
            continue
        if spec.choices is not None and value not in spec.choices:
            shown = ", ".join(str(c) for c in spec.choices if c is not None)
            rep.error(f.name, f"{value!r} is not one of: {shown}")
        problem = number_problem(f.name, value) if want in (int, float) else None
        if problem:
            rep.error(f.name, problem)


def _check_workers(cfg: TrainConfig, rep: ValidationReport) -> None:
    """More DataLoader workers than cores only thrash; the loader clamps, as sd-scripts does."""
    workers, cores = cfg.max_data_loader_n_workers, os.cpu_count() or 1
    if isinstance(workers, int) and workers > cores:
        rep.warn("max_data_loader_n_workers", f"{workers} is more than the {cores} CPU cores here; {cores} will be used (as sd-scripts does)")


def _check_alpha_background(cfg: TrainConfig, rep: ValidationReport) -> None:
    from library.data.specs import parse_color

    if isinstance(cfg.alpha_background, str):
        try:
            parse_color(cfg.alpha_background)
        except ConfigError as exc:
            rep.error("alpha_background", exc.summary.split(": ", 1)[-1] + "; write a name such as white, black, gray, or #rrggbb")


def _check_resolution_and_buckets(cfg: TrainConfig, rep: ValidationReport) -> None:
    try:
        w, h = parse_resolution(cfg.resolution)
    except LorasmithError as exc:
        rep.error("resolution", str(exc).split(": ", 1)[-1])
        return
    if max(w, h) > MAX_RESOLUTION:
        rep.error("resolution", f"{w}x{h} is too large; each side must be from 64 to {MAX_RESOLUTION} pixels")
        return
    if w % 8 or h % 8:
        rep.error("resolution", f"{w}x{h} is not a multiple of 8 (the VAE downsamples by 8); try {w // 8 * 8}x{h // 8 * 8}")
    if not cfg.enable_bucket:
        return
    step = cfg.bucket_reso_steps
    if cfg.min_bucket_reso > cfg.max_bucket_reso:
        rep.error("min_bucket_reso", f"{cfg.min_bucket_reso} is above max_bucket_reso {cfg.max_bucket_reso}")
    for name in ("min_bucket_reso", "max_bucket_reso"):
        value = getattr(cfg, name)
        if isinstance(value, int) and isinstance(step, int) and step > 0 and value % step:
            rep.error(name, f"{value} is not a multiple of bucket_reso_steps {step}")
    if isinstance(step, int) and step % 8:
        rep.error("bucket_reso_steps", f"{step} is not a multiple of 8")
    elif isinstance(step, int) and step % 64:
        rep.warn("bucket_reso_steps", f"{step} is not a multiple of 64; some models train worse on such sizes")


def _check_contradictions(cfg: TrainConfig, rep: ValidationReport) -> None:
    caching = cfg.cache_latents or cfg.cache_latents_to_disk
    for aug in ("color_aug", "random_crop"):
        if caching and getattr(cfg, aug):
            rep.error(aug, "cannot be used with cache_latents: cached latents cannot be re-augmented; turn one of them off")
    if cfg.network_train_unet_only and cfg.network_train_text_encoder_only:
        rep.error("network_train_unet_only", "and network_train_text_encoder_only together train nothing; choose one")
    if cfg.full_fp16 and cfg.mixed_precision != "fp16":
        rep.error("full_fp16", "needs mixed_precision fp16")
    if cfg.full_bf16 and cfg.mixed_precision != "bf16":
        rep.error("full_bf16", "needs mixed_precision bf16")
    if cfg.fp8_base and cfg.mixed_precision == "no":
        rep.error("fp8_base", "needs mixed_precision bf16 or fp16 (float8 weights are upcast to that precision; sd-scripts has the same rule)")
    lo = cfg.min_timestep if cfg.min_timestep is not None else 0
    hi = cfg.max_timestep if cfg.max_timestep is not None else 1000
    if isinstance(lo, int) and isinstance(hi, int) and lo >= hi:
        rep.error("min_timestep", f"{lo} must be below max_timestep {hi}")
    _check_v_prediction(cfg, rep)
    if cfg.xformers and importlib.util.find_spec("xformers") is None:
        rep.error("xformers", "xformers is not installed; drop --xformers (PyTorch SDPA attention is used by default and is as fast)")
    if cfg.cache_text_encoder_outputs or cfg.cache_text_encoder_outputs_to_disk:
        trains_te = not cfg.network_train_unet_only
        varies = cfg.shuffle_caption or cfg.caption_dropout_rate > 0 or cfg.caption_tag_dropout_rate > 0 or cfg.caption_dropout_every_n_epochs > 0
        if trains_te:
            rep.error("cache_text_encoder_outputs", "needs network_train_unet_only (a trained text encoder changes its outputs)")
        if varies:
            rep.error("cache_text_encoder_outputs", "cannot be used with shuffled or dropped captions (their encodings change every step)")
    if (cfg.sample_every_n_epochs or cfg.sample_every_n_steps or cfg.sample_at_first) and not cfg.sample_prompts:
        rep.warn("sample_prompts", "is unset, so no samples will be generated although sampling is scheduled")


def is_adaptive(optimizer_type: str) -> bool:
    name = optimizer_type.lower()
    return any(name.startswith(p) for p in ADAPTIVE_OPTIMIZERS)


def _check_optimizer(cfg: TrainConfig, rep: ValidationReport) -> None:
    name = cfg.optimizer_type
    if not isinstance(name, str) or not name:
        return
    if "." not in name and name.lower() not in KNOWN_OPTIMIZERS:
        import difflib

        close = difflib.get_close_matches(name.lower(), KNOWN_OPTIMIZERS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        rep.error("optimizer_type", f"{name!r} is unknown{hint}; use AdamW, AdamW8bit, DAdaptAdam, Prodigy, Lion, SGDNesterov, AdaFactor or a dotted class path")
    try:
        args = parse_key_value_args(cfg.optimizer_args, "optimizer_args")
    except ConfigError as exc:
        for p in exc.problems:
            rep.errors.append(Issue("optimizer_args", p))
        args = {}
    if is_adaptive(name):
        for lr_name in ("learning_rate", "unet_lr", "text_encoder_lr"):
            lr = getattr(cfg, lr_name)
            if isinstance(lr, (int, float)) and lr <= 0.1:
                rep.warn(lr_name, f"{lr} with {name}: adaptive optimizers find the step size themselves and expect about 1.0")
    if name.lower() == "dadaptadam" and args.get("decouple") is not True:
        rep.warn("optimizer_args", "DAdaptAdam without decouple=True applies weight decay as L2 (Adam, not AdamW); training may barely move. Add decouple=True")
    if name.lower() == "dadaptadam" and args.get("use_bias_correction") is not True:
        rep.warn("optimizer_args", "DAdaptAdam without use_bias_correction=True leaves Adam's bias correction out of its "
                                   "steps; person LoRAs trained so showed artifacts in published comparisons. "
                                   "Add use_bias_correction=True")


def _check_network_args(cfg: TrainConfig, rep: ValidationReport) -> None:
    """network_args for the chosen network_module (library.lora.network_args: one parser for both places)."""
    from library.lora.network_args import check

    for problem in check(cfg.network_module, cfg.network_args)[1]:
        rep.error("network_args", problem)


def _check_saving(cfg: TrainConfig, rep: ValidationReport) -> None:
    if isinstance(cfg.output_name, str) and (not cfg.output_name or re.search(r"[\\/:*?\"<>|]", cfg.output_name)):
        rep.error("output_name", f"{cfg.output_name!r} must be a plain file name without / \\ : * ? \" < > |")
    epochs = cfg.max_train_epochs
    if cfg.save_every_n_epochs and epochs and cfg.save_every_n_epochs > epochs:
        rep.warn("save_every_n_epochs", f"{cfg.save_every_n_epochs} is more than max_train_epochs {epochs}: only the final file will be written")
    if cfg.sample_every_n_epochs and epochs and cfg.sample_every_n_epochs > epochs:
        rep.warn("sample_every_n_epochs", f"{cfg.sample_every_n_epochs} is more than max_train_epochs {epochs}: no per-epoch samples")


def _check_ema(cfg: TrainConfig, rep: ValidationReport) -> None:
    """The decay is a fraction strictly between 0 and 1: 0 copies the weights, 1 never moves."""
    d = cfg.ema_decay
    if isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d) and not 0 < d < 1:
        rep.error("ema_decay", f"{d!r} must be above 0 and below 1 (0.999 is typical; unset turns the EMA off)")


def _check_required(cfg: TrainConfig, rep: ValidationReport) -> None:
    if not cfg.pretrained_model_name_or_path:
        rep.error("pretrained_model_name_or_path", "is required: a .safetensors/.ckpt file, a diffusers folder, or 'tiny'")
    if not cfg.train_data_dir and not cfg.dataset_config:
        rep.error("train_data_dir", "is required (or dataset_config): the folder with '<repeats>_<class>' subfolders")
    if not cfg.output_dir:
        rep.error("output_dir", "is required: where the LoRA files are written")
    for f in option_fields():
        value = getattr(cfg, f.name)
        if isinstance(value, str) and _is_placeholder(value):
            rep.error(f.name, f"is still the placeholder {value!r} from the config file; "
                              f"pass --{f.name} PATH or fill in the real path")


# A Hugging Face hub id: "owner/name", nothing more (a relative path to a file has a suffix).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def builtin_model_names() -> list[str]:
    """The built-in models, with any a program registered at run time (bench's sd15-random)."""
    names = set(BUILTIN_MODEL_NAMES)
    registry = sys.modules.get("library.models.builtin")
    if registry is not None:
        names.update(registry.BUILTIN_MODELS)
    return sorted(names)


def model_not_found(value: str, what: str = "base model") -> list[str]:
    """Why `value` names no model, and what to pass instead (also used by the model loader)."""
    if _HUB_ID.match(value) and Path(value).suffix.lower() not in (".safetensors", ".ckpt", ".pt", ".bin"):
        return [f"{value!r} looks like a Hugging Face hub id, but lorasmith works offline and downloads nothing",
                f"download the {what} yourself, then pass its .safetensors (or .ckpt) file or a diffusers folder "
                "(model_index.json with unet/, vae/, text_encoder/)"]
    return [f"{value!r} does not exist",
            f"give a .safetensors/.ckpt file, a diffusers folder, or a built-in name ({', '.join(builtin_model_names())})"]


def _check_paths(cfg: TrainConfig, rep: ValidationReport) -> None:
    """Every path the run reads must exist, and none it writes may be a file, before anything is created."""
    model = cfg.pretrained_model_name_or_path
    if isinstance(model, str) and model and not _is_placeholder(model) and model not in builtin_model_names():
        if not Path(model).expanduser().exists():
            rep.error("pretrained_model_name_or_path", "; ".join(model_not_found(model)))
    if cfg.vae and not _is_placeholder(cfg.vae) and not Path(cfg.vae).expanduser().exists():
        rep.error("vae", "; ".join(model_not_found(cfg.vae, "VAE")))
    for name in ("train_data_dir", "reg_data_dir"):
        value = getattr(cfg, name)
        if value and not _is_placeholder(value) and not Path(value).expanduser().is_dir():
            rep.error(name, f"{value!r} is not a folder; give the folder holding '<repeats>_<class tokens>' subfolders "
                            "(e.g. img/10_ohwx woman/)")
        elif value and not _is_placeholder(value) and not os.access(Path(value).expanduser(), os.R_OK | os.X_OK):
            rep.error(name, f"{value!r} cannot be read (permission denied); fix its permissions (chmod u+rx) or use another folder")
    for name in ("dataset_config", "network_weights", "sample_prompts"):
        value = getattr(cfg, name)
        if value and not _is_placeholder(value) and not Path(value).expanduser().is_file():
            rep.error(name, f"{value!r} is not a file")
        elif value and not _is_placeholder(value) and not os.access(Path(value).expanduser(), os.R_OK):
            rep.error(name, f"{value!r} cannot be read (permission denied); fix its permissions (chmod u+r) or use another file")
    for name in ("output_dir", "logging_dir"):
        value = getattr(cfg, name)
        if value and not _is_placeholder(value) and Path(value).expanduser().is_file():
            rep.error(name, f"{value!r} is a file; give a folder (it is created when training starts)")


def _is_placeholder(value: str) -> bool:
    return value.startswith("<") and value.endswith(">")


def _check_v_prediction(cfg: TrainConfig, rep: ValidationReport) -> None:
    """sd-scripts' rules for the v-prediction loss options (train_util.verify_training_args)."""
    if cfg.scale_v_pred_loss_like_noise_pred and not cfg.v_parameterization:
        rep.error("scale_v_pred_loss_like_noise_pred", "needs v_parameterization (it rescales a v-prediction loss); add --v_parameterization or drop it")
    if cfg.v_pred_like_loss and cfg.v_parameterization:
        rep.error("v_pred_like_loss", "is for noise-prediction models and cannot be used with v_parameterization; drop one of them")
    if cfg.zero_terminal_snr and not cfg.v_parameterization:
        rep.warn("zero_terminal_snr", "without v_parameterization a noise-prediction model cannot learn the pure-noise last timestep "
                 "(sd-scripts warns the same); add --v_parameterization for a v-prediction model")
