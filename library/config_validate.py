"""Checks a `TrainConfig` before anything heavy happens.

Every problem is collected and raised together in one `ConfigError`, each
line naming the field, the value and the fix; warnings are returned so the
caller can print them (CLI) or show them beside the field (GUI).
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field

from library.config import (
    TrainConfig,
    base_type,
    is_optional,
    option_fields,
    parse_key_value_args,
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
    _check_optimizer(cfg, rep)
    _check_network_args(cfg, rep)
    _check_saving(cfg, rep)
    if for_training:
        _check_required(cfg, rep)
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
        if spec.min is not None and isinstance(value, (int, float)) and value < spec.min:
            rep.error(f.name, f"{value} is below the minimum {spec.min}")
        if spec.max is not None and isinstance(value, (int, float)) and value > spec.max:
            rep.error(f.name, f"{value} is above the maximum {spec.max}")


def _check_resolution_and_buckets(cfg: TrainConfig, rep: ValidationReport) -> None:
    try:
        w, h = parse_resolution(cfg.resolution)
    except LorasmithError as exc:
        rep.error("resolution", str(exc).split(": ", 1)[-1])
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
    lo = cfg.min_timestep if cfg.min_timestep is not None else 0
    hi = cfg.max_timestep if cfg.max_timestep is not None else 1000
    if isinstance(lo, int) and isinstance(hi, int) and lo >= hi:
        rep.error("min_timestep", f"{lo} must be below max_timestep {hi}")
    if cfg.v2:
        rep.error("v2", "SD 2.x models are not supported yet; use an SD 1.x checkpoint")
    if cfg.xformers and importlib.util.find_spec("xformers") is None:
        rep.error("xformers", "xformers is not installed; drop --xformers (PyTorch SDPA attention is used by default and is as fast)")
    if cfg.cache_text_encoder_outputs:
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


def _check_required(cfg: TrainConfig, rep: ValidationReport) -> None:
    if not cfg.pretrained_model_name_or_path:
        rep.error("pretrained_model_name_or_path", "is required: a .safetensors/.ckpt file, a diffusers folder, or 'tiny'")
    if not cfg.train_data_dir and not cfg.dataset_config:
        rep.error("train_data_dir", "is required (or dataset_config): the folder with '<repeats>_<class>' subfolders")
    if not cfg.output_dir:
        rep.error("output_dir", "is required: where the LoRA files are written")
    for f in option_fields():
        value = getattr(cfg, f.name)
        if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
            rep.error(f.name, f"{value!r} is a placeholder left in the config; fill in the real path")
