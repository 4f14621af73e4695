"""Training data exactly as sd-scripts reads it: folders, captions, buckets, regularization, caches.

Typical use (the trainer):
    prepared = prepare_data(config)               # one scan, no model; raises listing every problem
    print(format_plan(prepared.plan))
    dataset = build_dataset(prepared, config, seed=seed, tokenizer=bundle.tokenizer, vae=bundle.vae)
    loader = make_dataloader(dataset, config.max_data_loader_n_workers, config.persistent_data_loader_workers)
    for epoch in range(1, epochs + 1):
        dataset.set_epoch(epoch)
        for batch in loader: ...                  # batch["latents"] are unscaled: multiply by vae.config.scaling_factor

Names are imported on first use (library.lazy), so registering a command loads no torch.
"""
from __future__ import annotations

from library.lazy import lazy_exports

_EXPORTS = {
    "LoraDataset": "dataset", "make_dataloader": "dataset", "TrainingPlan": "plan",
    "dataset_dirs_info": "plan", "dataset_metadata": "plan", "format_plan": "plan", "make_plan": "plan",
    "tag_frequency": "plan", "PreparedData": "prepare", "build_dataset": "prepare",
    "prepare_data": "prepare", "encode_tokens": "text", "tokenize_captions": "text",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
