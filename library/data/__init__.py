"""Training data exactly as sd-scripts reads it: folders, captions, buckets, regularization, caches.

Typical use (the trainer):
    prepared = prepare_data(config)               # one scan, no model; raises listing every problem
    print(format_plan(prepared.plan))
    dataset = build_dataset(prepared, config, seed=seed, tokenizer=bundle.tokenizer, vae=bundle.vae)
    loader = make_dataloader(dataset, config.max_data_loader_n_workers, config.persistent_data_loader_workers)
    for epoch in range(1, epochs + 1):
        dataset.set_epoch(epoch)
        for batch in loader: ...                  # batch["latents"] are unscaled: multiply by vae.config.scaling_factor
"""
from library.data.dataset import LoraDataset, make_dataloader
from library.data.plan import TrainingPlan, dataset_dirs_info, dataset_metadata, format_plan, make_plan, tag_frequency
from library.data.prepare import PreparedData, build_dataset, prepare_data
from library.data.text import encode_tokens, tokenize_captions

__all__ = [
    "LoraDataset", "PreparedData", "TrainingPlan", "build_dataset", "dataset_dirs_info", "dataset_metadata",
    "encode_tokens", "format_plan", "make_dataloader", "make_plan", "prepare_data", "tag_frequency", "tokenize_captions",
]
