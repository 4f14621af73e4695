"""`--dataset_config`: sd-scripts' dataset TOML (or JSON), validated strictly.

Layout (sd-scripts `config_util`): `[general]` holds defaults for every
dataset and subset; each `[[datasets]]` holds dataset options (resolution,
batch_size, buckets) and subset defaults; each `[[datasets.subsets]]` needs
`image_dir`. A value is looked up subset → dataset → general → command line →
default. Unlike sd-scripts, unknown keys and wrong types are errors naming the
section and key (with a "did you mean"), all reported at once; sd-scripts keys
lorasmith does not implement are refused unless set to their default.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from library.config import INT_MAX_DEFAULT, shown_value
from library.data.buckets import BucketGeometry
from library.data.captions import CaptionOptions
from library.data.specs import DatasetSpec, SubsetSpec, image_options, parse_resolution
from library.errors import ConfigError

FLOAT = (float, int)
SUBSET_KEYS: dict[str, tuple] = {
    "num_repeats": (int,), "shuffle_caption": (bool,), "caption_separator": (str,), "keep_tokens": (int,),
    "keep_tokens_separator": (str,), "secondary_separator": (str,), "caption_prefix": (str,), "caption_suffix": (str,),
    "caption_dropout_rate": FLOAT, "caption_dropout_every_n_epochs": (int,), "caption_tag_dropout_rate": FLOAT,
    "color_aug": (bool,), "flip_aug": (bool,), "random_crop": (bool,), "caption_extension": (str,),
    "class_tokens": (str,), "cache_info": (bool,), "alpha_mask": (bool,),
}
SUBSET_ONLY_KEYS: dict[str, tuple] = {"image_dir": (str,), "is_reg": (bool,), "conditioning_data_dir": (str,)}
DATASET_KEYS: dict[str, tuple] = {
    "batch_size": (int,), "resolution": (int, list), "enable_bucket": (bool,), "min_bucket_reso": (int,),
    "max_bucket_reso": (int,), "bucket_reso_steps": (int,), "bucket_no_upscale": (bool,), "prior_loss_weight": FLOAT,
    "validation_split": FLOAT, "validation_seed": (int,),
}
# sd-scripts keys we do not implement: accepted only at these (default) values.
UNSUPPORTED = {
    "face_crop_aug_range": None, "enable_wildcard": False, "token_warmup_min": 1, "token_warmup_step": 0,
    "custom_attributes": None, "resize_interpolation": None,
    "network_multiplier": 1.0, "debug_dataset": False,
}
ARG_NAMES = {"batch_size": "train_batch_size"}  # dataset key → TrainConfig field
DEFAULTS: dict[str, Any] = {
    "num_repeats": 1, "shuffle_caption": False, "caption_separator": ",", "keep_tokens": 0, "keep_tokens_separator": "",
    "secondary_separator": None, "caption_prefix": None, "caption_suffix": None, "caption_dropout_rate": 0.0,
    "caption_dropout_every_n_epochs": 0, "caption_tag_dropout_rate": 0.0, "color_aug": False, "flip_aug": False,
    "random_crop": False, "caption_extension": ".caption", "class_tokens": None, "is_reg": False, "batch_size": 1,
    "resolution": None, "enable_bucket": False, "min_bucket_reso": 256, "max_bucket_reso": 1024,
    "bucket_reso_steps": 64, "bucket_no_upscale": False, "prior_loss_weight": 1.0, "alpha_mask": False,
    "validation_split": 0.0, "validation_seed": None,
}


def load_dataset_config(path: str | Path) -> dict:
    """Read the TOML/JSON file; syntax errors name the file and position."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"dataset_config: {path} does not exist", ["dataset_config: point it at a .toml or .json file"])
    from library.config_io import parse_structured

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"dataset_config: {path} cannot be parsed", [f"{path}: {exc}"]) from None
    try:
        return parse_structured(text, ".json" if path.suffix.lower() == ".json" else ".toml", str(path))
    except ConfigError as exc:
        raise ConfigError(f"dataset_config: {path} cannot be parsed", [exc.summary, *exc.problems]) from None


def _check_section(section: dict, where: str, allowed: dict[str, tuple], problems: list[str]) -> None:
    if not isinstance(section, dict):
        problems.append(f"{where}: expected a table, got {type(section).__name__}")
        return
    for key, value in section.items():
        if key in UNSUPPORTED:
            if value != UNSUPPORTED[key]:
                problems.append(f"{where}: '{key}' is an sd-scripts option lorasmith does not support; remove it")
        elif key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(sorted(allowed))}"
            problems.append(f"{where}: unknown key '{key}'{hint}")
        elif (isinstance(value, bool) and bool not in allowed[key]) or not isinstance(value, allowed[key]):
            names = "/".join(t.__name__ for t in allowed[key])
            problems.append(f"{where}: '{key}' = {shown_value(value)} should be {names}")
        elif _bad_number(value):
            problems.append(f"{where}: '{key}' = {shown_value(value)} is not a usable number; "
                            f"use a finite value up to {INT_MAX_DEFAULT}")


def _bad_number(value: object) -> bool:
    """nan/inf, or a number beyond any sane count/size (overflows torch and NumPy later)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (isinstance(value, float) and not math.isfinite(value)) or abs(value) > INT_MAX_DEFAULT


def validate(user: dict) -> list[str]:
    """Every structural problem of the file, each naming its section and key."""
    problems: list[str] = []
    for key in user:
        if key not in ("general", "datasets"):
            close = difflib.get_close_matches(key, ["general", "datasets"], n=1)
            problems.append(f"top level: unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else ""))
    general_keys = {**SUBSET_KEYS, **DATASET_KEYS}
    _check_section(user.get("general", {}), "[general]", general_keys, problems)
    datasets = user.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        problems.append("[[datasets]]: at least one [[datasets]] table with [[datasets.subsets]] is required")
        return problems
    for di, ds in enumerate(datasets, 1):
        where = f"[[datasets]] #{di}"
        _check_section(ds, where, {**general_keys, "subsets": (list,)}, problems)
        subsets = ds.get("subsets", []) if isinstance(ds, dict) else []
        if not subsets:
            problems.append(f"{where}: has no [[datasets.subsets]]; add one with image_dir")
        for si, sub in enumerate(subsets, 1):
            swhere = f"{where} [[datasets.subsets]] #{si}"
            if isinstance(sub, dict) and "metadata_file" in sub:
                problems.append(f"{swhere}: fine-tuning subsets (metadata_file) are not supported; use image_dir with caption files")
                continue
            _check_section(sub, swhere, {**SUBSET_KEYS, **SUBSET_ONLY_KEYS}, problems)
            if isinstance(sub, dict) and "image_dir" not in sub:
                problems.append(f"{swhere}: 'image_dir' is required")
    return problems


def _lookup(key: str, layers: list[dict], config) -> Any:
    for layer in layers:
        if layer.get(key) is not None:
            return layer[key]
    value = getattr(config, ARG_NAMES.get(key, key), None) if config is not None else None
    return value if value is not None else DEFAULTS[key]


def _subset(layers: list[dict], config, base: Path) -> SubsetSpec:
    get = lambda k: _lookup(k, layers, config)  # noqa: E731
    caption_keys = [f for f in CaptionOptions.__dataclass_fields__]
    image_dir = Path(layers[0]["image_dir"])
    mask_dir = Path(layers[0]["conditioning_data_dir"]) if layers[0].get("conditioning_data_dir") else None
    return SubsetSpec(
        image_dir=image_dir if image_dir.is_absolute() else base / image_dir,
        num_repeats=get("num_repeats"), is_reg=get("is_reg"), class_tokens=get("class_tokens"),
        caption_extension=get("caption_extension"), captions=CaptionOptions(**{k: get(k) for k in caption_keys}),
        flip_aug=get("flip_aug"), color_aug=get("color_aug"), random_crop=get("random_crop"), alpha_mask=get("alpha_mask"),
        image=image_options(config, bool(get("alpha_mask"))),
        mask_dir=None if mask_dir is None else (mask_dir if mask_dir.is_absolute() else base / mask_dir),
    )


def specs_from_user_config(user: dict, config=None, base_dir: str | Path = ".") -> list[DatasetSpec]:
    """Validated DatasetSpecs; relative image_dir paths are taken from `base_dir` (the working folder)."""
    problems = validate(user)
    if problems:
        raise ConfigError(f"dataset_config has {len(problems)} problem(s)", problems)
    general = user.get("general", {})
    specs = []
    for di, ds in enumerate(user["datasets"], 1):
        layers = [ds, general]
        get = lambda k: _lookup(k, layers, config)  # noqa: E731
        res = get("resolution")
        if res is None:
            raise ConfigError(f"[[datasets]] #{di}: no resolution", [f"[[datasets]] #{di}: set resolution here, in [general] or with --resolution"])
        geometry = BucketGeometry(parse_resolution(res, f"[[datasets]] #{di} resolution"), get("enable_bucket"),
                                  get("min_bucket_reso"), get("max_bucket_reso"), get("bucket_reso_steps"), get("bucket_no_upscale"))
        subsets = tuple(_subset([sub, ds, general], config, Path(base_dir)) for sub in ds["subsets"])
        specs.append(DatasetSpec(subsets, geometry, get("batch_size"), float(get("prior_loss_weight")),
                                 float(get("validation_split")), get("validation_seed")))
    return specs


def load_dataset_specs(path: str | Path, config=None, base_dir: str | Path = ".") -> list[DatasetSpec]:
    return specs_from_user_config(load_dataset_config(path), config, base_dir)
