"""Score a sweep's files with library.scoring.scores, loading each base model and evaluation set once.

All variants of a sweep usually share the base model and the dataset, so the model
is loaded once and the evaluation images encoded once; a sweep that varies the model
or the data gets one of each per distinct setting (its scores then compare less well,
which the ranking note says).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from library.sweep.manifest import VariantRecord
from library.sweep.variants import Variant

# Fields that decide the evaluation set (library.scoring.eval_set.eval_set_from_config).
EVAL_SET_FIELDS = ("train_data_dir", "reg_data_dir", "dataset_config", "validation_split", "validation_seed", "seed",
                   "resolution", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                   "bucket_no_upscale", "caption_extension", "caption_prefix", "caption_suffix", "clip_skip",
                   "max_token_length", "zero_terminal_snr")
MODEL_FIELDS = ("pretrained_model_name_or_path", "vae", "use_ema_weights", "v_parameterization")


def comparability_note(varied: Sequence[str]) -> str:
    """What the ranking says when the variants were not all scored on the same model and images."""
    moved = [f for f in varied if f in EVAL_SET_FIELDS or f in MODEL_FIELDS]
    if not moved:
        return ""
    return (f"{', '.join(moved)} vary, so the variants were scored on different base models or evaluation images; "
            "compare their scores with care")


class SweepScorer:
    """`scorer(record, files) -> [EpochScore]`, with models and evaluation sets cached across variants."""

    def __init__(self, variants: Sequence[Variant], *, weights: Sequence[float],
                 progress: Callable[[str], None] | None = None) -> None:
        self.configs = {v.name: v.config for v in variants}
        self.weights = tuple(weights)
        self.progress = progress
        self._bundles: dict[tuple, Any] = {}
        self._sets: dict[tuple, Any] = {}

    def bundle_for(self, cfg: Any) -> Any:
        key = tuple(getattr(cfg, f) for f in MODEL_FIELDS)
        if key not in self._bundles:
            import torch

            from library.models import load_model_bundle

            bundle = load_model_bundle(cfg.pretrained_model_name_or_path, vae=cfg.vae, use_ema_weights=cfg.use_ema_weights,
                               v2=cfg.v2, v_parameterization=cfg.v_parameterization)
            if torch.cuda.is_available():
                for module in (bundle.unet, bundle.text_encoder, bundle.vae):
                    module.to("cuda")
            if cfg.v_parameterization:
                bundle.scheduler_config = {**bundle.scheduler_config, "prediction_type": "v_prediction"}
            self._bundles[key] = bundle
        return self._bundles[key]

    def eval_set_for(self, cfg: Any, bundle: Any) -> Any:
        from library.scoring.eval_set import eval_set_from_config

        key = tuple(getattr(cfg, f) for f in MODEL_FIELDS + EVAL_SET_FIELDS)
        if key not in self._sets:
            self._sets[key] = eval_set_from_config(bundle, cfg)
        return self._sets[key]

    def __call__(self, rec: VariantRecord, files: list[str]) -> list[Any]:
        from library.scoring.scores import score_files

        cfg = self.configs[rec.name]
        bundle = self.bundle_for(cfg)
        eval_set = self.eval_set_for(cfg, bundle)
        if self.progress:
            self.progress(f"scoring {rec.name}: {len(files)} file(s) x {len(self.weights)} weight(s)")
        return score_files(bundle, files, eval_set, weights=self.weights)
