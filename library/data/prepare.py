"""The one entry the trainer, the plan command and the GUI use: config → scanned, bucketed data.

`prepare_data(config)` reads sd-scripts-named options from any object (a
`TrainConfig`, an argparse Namespace) with getattr, checks option conflicts,
scans the folders once and returns the description, the bucketed layouts and
the plan — no model needed. `build_dataset(...)` then adds the model-dependent
parts (tokenizer, latent and text-encoder caches) and returns the torch dataset.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from library.data.buckets import BucketGeometry
from library.data.captions import CaptionOptions
from library.data.dataset import LoraDataset
from library.data.dataset_config import load_dataset_specs
from library.data.folders import DatasetDescription, scan_datasets, subsets_from_dirs
from library.data.holdout import fraction_problem, held_out_count, split_description
from library.data.latent_cache import LatentRequest, cache_latents
from library.data.layout import DatasetLayout, build_layout
from library.data.masks import MaskSource, mask_source
from library.data.plan import TrainingPlan, make_plan
from library.data.specs import DatasetSpec, SubsetSpec, image_options, parse_resolution
from library.data.text import cache_text_encoder_outputs, chunk_count
from library.errors import ConfigError, DatasetError


def opt(config, name: str, default=None):
    """A config value by its sd-scripts name (None counts as unset)."""
    value = getattr(config, name, None)
    return default if value is None else value


def caption_options(config) -> CaptionOptions:
    return CaptionOptions(**{name: opt(config, name, field.default) for name, field in CaptionOptions.__dataclass_fields__.items()})


def template_subset(config) -> SubsetSpec:
    """Per-folder options from the flat config, applied to every `<repeats>_<tokens>` folder."""
    return SubsetSpec(
        image_dir=Path("."), caption_extension=opt(config, "caption_extension", ".caption"), captions=caption_options(config),
        flip_aug=bool(opt(config, "flip_aug", False)), color_aug=bool(opt(config, "color_aug", False)),
        random_crop=bool(opt(config, "random_crop", False)), alpha_mask=bool(opt(config, "alpha_mask", False)),
        image=image_options(config, bool(opt(config, "alpha_mask", False))),
    )


def geometry(config) -> BucketGeometry:
    return BucketGeometry(
        parse_resolution(opt(config, "resolution", "512")), bool(opt(config, "enable_bucket", False)),
        int(opt(config, "min_bucket_reso", 256)), int(opt(config, "max_bucket_reso", 1024)),
        int(opt(config, "bucket_reso_steps", 64)), bool(opt(config, "bucket_no_upscale", False)),
    )


def dataset_specs(config) -> tuple[list[DatasetSpec], list[str]]:
    """DatasetSpecs from `dataset_config` when given, else from train/reg folders (with folder-name problems)."""
    if opt(config, "dataset_config"):
        return load_dataset_specs(opt(config, "dataset_config"), config), []
    if not opt(config, "train_data_dir"):
        raise ConfigError("no training data given", ["train_data_dir: set the folder of '<repeats>_<name>' subfolders, or dataset_config"])
    subsets, problems = subsets_from_dirs(opt(config, "train_data_dir"), opt(config, "reg_data_dir"), template_subset(config))
    subsets = mirror_mask_dirs(subsets, opt(config, "conditioning_data_dir"))
    spec = DatasetSpec(tuple(subsets), geometry(config), int(opt(config, "train_batch_size", 1)), float(opt(config, "prior_loss_weight", 1.0)),
                       float(opt(config, "validation_split", 0.0)), opt(config, "validation_seed"))
    return [spec], problems


def mirror_mask_dirs(subsets: list[SubsetSpec], conditioning_data_dir: str | None) -> list[SubsetSpec]:
    """Training folders' masks in `<conditioning_data_dir>/<folder name>`; reg folders keep all-ones masks."""
    if not conditioning_data_dir:
        return subsets
    return [s if s.is_reg else dataclasses.replace(s, mask_dir=Path(conditioning_data_dir) / s.name) for s in subsets]


def check_options(config, specs: list[DatasetSpec]) -> None:
    """Option conflicts sd-scripts asserts on, as one ConfigError."""
    problems = []
    subsets = [s for d in specs for s in d.subsets]
    if opt(config, "cache_latents") or opt(config, "cache_latents_to_disk"):
        for name in ("color_aug", "random_crop"):
            if any(getattr(s, name) for s in subsets):
                problems.append(f"{name}: changes the pixels every step, so latents cannot be cached; turn off {name} or cache_latents")
    if opt(config, "cache_text_encoder_outputs") and not all(s.captions.is_fixed for s in subsets):
        problems.append("cache_text_encoder_outputs: captions change every step (shuffle or dropout); turn those off or do not cache")
    for d in specs:
        g = d.geometry
        if g.enable_bucket and not g.bucket_no_upscale and (min(g.resolution) < g.min_bucket_reso or max(g.resolution) > g.max_bucket_reso):
            problems.append(f"min_bucket_reso/max_bucket_reso: {g.min_bucket_reso}..{g.max_bucket_reso} must include resolution {g.resolution[0]}x{g.resolution[1]}")
        if d.batch_size < 1:
            problems.append(f"train_batch_size: {d.batch_size} must be 1 or more")
    problems += mask_option_problems(bool(opt(config, "masked_loss")), subsets)
    for di, d in enumerate(specs, 1):
        problem = fraction_problem(d.validation_split, "validation_split" if len(specs) == 1 else f"[[datasets]] #{di} validation_split")
        problems += [problem] if problem else []
    try:
        chunk_count(opt(config, "max_token_length"))
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError("dataset options conflict", problems)


def mask_option_problems(masked_loss: bool, subsets: list[SubsetSpec]) -> list[str]:
    """masked_loss needs a mask source, and mask sources need masked_loss (sd-scripts would ignore them silently)."""
    has_masks = any(s.alpha_mask or s.mask_dir is not None for s in subsets)
    if masked_loss and not has_masks:
        return ["masked_loss: no masks given; set alpha_mask (masks in the images' alpha channel) or conditioning_data_dir (a mask folder)"]
    if has_masks and not masked_loss:
        return ["alpha_mask/conditioning_data_dir: masks are only used with masked_loss; turn masked_loss on or remove them"]
    missing = [str(s.mask_dir) for s in subsets if s.mask_dir is not None and not Path(s.mask_dir).is_dir()]
    return [f"conditioning_data_dir: mask folder {m} does not exist; create it (lorasmith dataset mask) with one mask per image"
            for m in missing]


@dataclass
class PreparedData:
    description: DatasetDescription
    layouts: list[DatasetLayout]
    plan: TrainingPlan
    masks: dict[tuple[int, int], MaskSource] | None = field(default=None)  # (dataset, item) → mask; None: no masked_loss
    validation: "PreparedData | None" = None  # the held-out images (--validation_split), laid out the same way

    @property
    def held_out_images(self) -> int:
        return 0 if self.validation is None else sum(lay.num_train_images for lay in self.validation.layouts)


def prepare_data(config, *, num_processes: int = 1) -> PreparedData:
    """Options → specs → one folder scan → buckets → plan. Raises ConfigError/DatasetError listing every problem."""
    specs, folder_problems = dataset_specs(config)
    check_options(config, specs)
    description = scan_datasets(specs, bool(opt(config, "skip_bad_images", False)), folder_problems)
    description, held = split_description(description, opt(config, "seed"))
    layouts = [build_layout(d) for d in description.datasets]
    plan = make_plan(
        layouts, gradient_accumulation_steps=int(opt(config, "gradient_accumulation_steps", 1)),
        max_train_epochs=opt(config, "max_train_epochs"), max_train_steps=int(opt(config, "max_train_steps", 1600)),
        num_processes=num_processes, skipped=description.skipped,
        optimizer_type=opt(config, "optimizer_type"), target_steps=opt(config, "target_steps"),
    )
    plan.held_out_images = held_out_count(held)
    if opt(config, "ema_decay") is not None:
        plan.ema = {"decay": float(opt(config, "ema_decay")), "update_every": int(opt(config, "ema_update_every", 1)),
                    "warmup": bool(opt(config, "ema_warmup", True))}
    if held is None and any(d.validation_split > 0 for d in specs):
        plan.warnings.append("validation_split holds out no image: every folder is too small for it (a folder of n images "
                             "keeps ceil(n x (1 - split)) for training); raise validation_split or add images")
    masks = item_masks(layouts) if opt(config, "masked_loss") else None
    return PreparedData(description, layouts, plan, masks, validation_data(held, plan, bool(opt(config, "masked_loss"))))


def validation_data(held: DatasetDescription | None, plan: TrainingPlan, masked_loss: bool) -> PreparedData | None:
    """The held-out images laid out in buckets like training data (they share the training plan)."""
    if held is None:
        return None
    layouts = [build_layout(d) for d in held.datasets]
    return PreparedData(held, layouts, plan, item_masks(layouts) if masked_loss else None)


def item_masks(layouts: list[DatasetLayout]) -> dict[tuple[int, int], MaskSource]:
    """Every item's mask source; every image without its mask file, listed in one DatasetError."""
    masks, problems = {}, []
    for di, lay in enumerate(layouts):
        for k, it in enumerate(lay.items):
            source, problem = mask_source(lay.subsets[it.subset_index].spec, it.image.path)
            masks[(di, k)] = source
            if problem and problem not in problems:
                problems.append(problem)
    if problems:
        raise DatasetError(f"masked_loss: {len(problems)} image(s) have no mask", problems)
    return masks


def build_dataset(prepared: PreparedData, config, *, seed: int, tokenizer=None, vae=None, text_encoder=None,
                  vae_id: str | None = None, progress: bool = True, report=None) -> LoraDataset:
    """The torch dataset, caching latents / text-encoder outputs first when the config asks.

    `report(done, total)` follows the latent caching (see latent_cache.cache_latents)."""
    latents = None
    if opt(config, "cache_latents") or opt(config, "cache_latents_to_disk"):
        if vae is None:
            raise ConfigError("cache_latents needs the VAE", ["build_dataset: pass vae= when caching latents"])
        latents = {}
        for di, lay in enumerate(prepared.layouts):
            flip = any(s.spec.flip_aug for s in lay.subsets)
            masks = prepared.masks or {}
            reqs = [LatentRequest((di, k), it.image.path, it.bucket, it.resized_size, masks.get((di, k), None), it.image.size,
                                  lay.subsets[it.subset_index].spec.image)
                    for k, it in enumerate(lay.items)]
            latents.update(cache_latents(reqs, vae, flip_aug=flip, to_disk=bool(opt(config, "cache_latents_to_disk")),
                                         vae_batch_size=int(opt(config, "vae_batch_size", 1)), vae_id=vae_id, progress=progress,
                                         report=report))
    dataset = LoraDataset(prepared.layouts, seed=seed, tokenizer=tokenizer, max_token_length=opt(config, "max_token_length"),
                          latents=latents, masks=prepared.masks)
    if opt(config, "cache_text_encoder_outputs"):
        if tokenizer is None or text_encoder is None:
            raise ConfigError("cache_text_encoder_outputs needs the tokenizer and text encoder", ["build_dataset: pass tokenizer= and text_encoder="])
        dataset.text_encoder_outputs = cache_text_encoder_outputs(
            tokenizer, text_encoder, dataset.fixed_captions(), max_token_length=opt(config, "max_token_length"),
            clip_skip=opt(config, "clip_skip"), progress=progress)
    return dataset
