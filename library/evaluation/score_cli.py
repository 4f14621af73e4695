"""`lorasmith evaluate`: score every saved epoch at several weights and say which to keep.

    lorasmith evaluate --lora 'out/name-*.safetensors' --train_data_dir data/ \\
        --pretrained_model_name_or_path base.safetensors [--reg_data_dir reg/] [--validation_split 0.2]

Prints a table (fidelity: the concept images' loss relative to the base model's,
lower = closer; drift: how far the LoRA moves the prediction on the class prompt,
unrelated prompts and reg images, lower = less damage) and a recommendation, and
writes evaluation.json, evaluation.csv and evaluation.png (atomically) to
--output_dir (default: an `evaluation` folder beside the first LoRA). The LoRA files
are only read. Folder options mean what they mean to `lorasmith train`, so with the
run's --validation_split the score uses exactly the images training never saw.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from library.config_io import add_config_arguments
from library.errors import ConfigError

DATA_OPTIONS = ("pretrained_model_name_or_path", "vae", "train_data_dir", "reg_data_dir", "dataset_config",
                "caption_extension", "resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                "validation_split", "validation_seed", "seed", "clip_skip", "max_token_length", "zero_terminal_snr",
                "logging_dir")


def _data_options() -> tuple[str, ...]:
    from library.config import option_fields

    known = {f.name for f in option_fields()}
    return tuple(n for n in DATA_OPTIONS if n in known)


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config_file", default=None,
                   help="the run's TOML / JSON config: its folders, resolution, split and seed (flags given here win)")
    add_config_arguments(p, _data_options())  # unset flags leave the config file's (or the defaults') values
    p.add_argument("--lora", required=True, help="LoRA files or a quoted glob, e.g. 'out/name-*.safetensors'")
    p.add_argument("--weights", default="0.6, 0.8, 1.0", help="LoRA weights to score each file at")
    p.add_argument("--class_prompt", default=None,
                   help="prompt of the class (drift there); default: the class word of the folder name ('10_ohwx woman' → woman)")
    p.add_argument("--eval_prompts", nargs="+", default=None,
                   help="unrelated prompts (drift there); default: three everyday scenes")
    p.add_argument("--drift_threshold", type=float, default=None, help="the most drift a recommendation may have")
    p.add_argument("--output_dir", default=None, help="folder for evaluation.json/.csv/.png (default: beside the LoRAs)")
    p.add_argument("--eval_batch_size", type=int, default=16, help="UNet batch size while scoring")
    p.add_argument("--eval_clip_model", default=None,
                   help="local transformers CLIP folder: adds CLIP-I (samples vs training images) and CLIP-T (vs prompt)")
    p.add_argument("--eval_dino_model", default=None, help="local DINO / DINOv2 / ViT folder: adds DINO similarity")
    p.add_argument("--eval_samples", type=int, default=4, help="samples per file and weight for CLIP/DINO")
    p.add_argument("--eval_sample_steps", type=int, default=20, help="sampling steps for CLIP/DINO samples")
    p.add_argument("--eval_sample_prompt", default=None,
                   help="prompt of the CLIP/DINO samples (default: the first concept caption, e.g. 'ohwx woman')")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="score every saved epoch (fidelity, drift) and recommend an epoch and weight",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_evaluate_arguments(p)
    p.set_defaults(func=run_evaluate_command)


def one_thread_is_faster(bundle) -> bool:
    """A tiny UNet on the CPU: its ops are too small to split across threads (measured on the 2-core CI box,
    tiny-world: 10 s per scored setting with two threads, 0.8 s with one; the demo found the same)."""
    unet = bundle.unet
    return next(unet.parameters()).device.type == "cpu" and sum(p.numel() for p in unet.parameters()) < 20_000_000


def config_from_args(args: argparse.Namespace):
    """The run's data options: the config file (when given) under the flags typed here."""
    from library.config import TrainConfig
    from library.config_resolve import load_config_source

    overrides = {n: getattr(args, n) for n in _data_options() if hasattr(args, n)}
    overrides.pop("logging_dir", None)  # TensorBoard only when asked here, not the run's folder
    config_file = getattr(args, "config_file", None)
    config = load_config_source(config_file, base=TrainConfig(), overrides=overrides) if config_file \
        else TrainConfig(**overrides)
    problems = []
    if not config.pretrained_model_name_or_path:
        problems.append("pass --pretrained_model_name_or_path (or a --config_file that sets it)")
    if not config.train_data_dir and not config.dataset_config:
        problems.append("pass --train_data_dir (or --dataset_config, or a --config_file that sets one)")
    if problems:
        raise ConfigError("evaluate needs the base model and the concept images", problems)
    return config


def run_evaluate_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from library.evaluation.axes import expand_lora_files
    from library.evaluation.score_report import log_tensorboard, table, write_reports
    from library.evaluation.values import parse_float_values
    from library.models import load_model_bundle
    from library.scoring.eval_set import eval_set_from_config
    from library.scoring.scores import (
        DEFAULT_DRIFT_THRESHOLD,
        DEFAULT_PRIOR_PROMPTS,
        recommend,
        score_files,
    )

    files = expand_lora_files(args.lora)
    weights = parse_float_values(args.weights)
    config = config_from_args(args)
    image_models = None
    if args.eval_clip_model or args.eval_dino_model:  # checked before minutes of scoring
        from library.evaluation.image_metrics import load_image_models

        image_models = load_image_models(args.eval_clip_model, args.eval_dino_model)
    bundle = load_model_bundle(config.pretrained_model_name_or_path, vae=config.vae, v2=config.v2,
                               v_parameterization=config.v_parameterization)
    if one_thread_is_faster(bundle):
        import torch

        torch.set_num_threads(1)
    eval_set = eval_set_from_config(bundle, config, class_prompt=args.class_prompt,
                                    prior_prompts=tuple(args.eval_prompts or DEFAULT_PRIOR_PROMPTS))
    print(f"scoring {len(files)} file(s) x {len(weights)} weight(s) on {eval_set.image_count} {eval_set.source}"
          f"{f' and {sum(b.latents.shape[0] for b in eval_set.reg)} reg images' if eval_set.reg else ''}; "
          f"class prompt {eval_set.class_prompt!r}")
    start = time.perf_counter()
    with tqdm(total=len(files) * len(weights), desc="evaluate", unit="setting") as bar:
        scores = score_files(bundle, files, eval_set, weights=weights, max_batch=max(1, args.eval_batch_size),
                             progress=lambda done, total, what: bar.update(1))
    if image_models is not None:
        from library.evaluation.image_metrics import add_image_scores

        prompt = args.eval_sample_prompt or eval_set.concept[0].captions[0]
        print(f"CLIP/DINO: {args.eval_samples} samples of {prompt!r} per file and weight")
        add_image_scores(bundle, scores, image_models, eval_set.image_paths, prompt, samples=max(1, args.eval_samples),
                         size=int(str(config.resolution).split(",")[0]), steps=args.eval_sample_steps,
                         seed=eval_set.seed)
    seconds = time.perf_counter() - start
    threshold = args.drift_threshold if args.drift_threshold is not None else DEFAULT_DRIFT_THRESHOLD
    rec = recommend(scores, threshold)
    print(table(scores, rec))
    print(f"\nrecommended: {rec.file} at weight {rec.weight:g}\n  {rec.why}")
    print(f"({seconds:.1f} s, {seconds / len(files):.2f} s per file)")
    out_dir = Path(args.output_dir) if args.output_dir else Path(files[0]).parent / "evaluation"
    info = {"evaluation_set": {"images": eval_set.image_count, "source": eval_set.source,
                               "class_prompt": eval_set.class_prompt, "prior_prompts": list(eval_set.prior_prompts),
                               "reg_images": sum(b.latents.shape[0] for b in eval_set.reg)},
            "drift_threshold": threshold, "seconds": round(seconds, 2)}
    for kind, path in write_reports(scores, rec, out_dir, info=info).items():
        print(f"{kind}: {path}")
    if getattr(args, "logging_dir", None):
        print(f"TensorBoard: {log_tensorboard(scores, Path(args.logging_dir) / 'evaluation')}")
    return 0
