"""The shipped SDXL person preset: sd-scripts' recommended SDXL LoRA settings, valid, with its sample prompts."""
from __future__ import annotations

from pathlib import Path

from library.config_validate import check_config
from library.presets import list_presets, load_preset
from library.sampling.training_samples import read_prompt_entries


def test_sdxl_person_preset_has_sd_scripts_recommended_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the prompt file is found beside the preset
    assert "person-sdxl-adamw8bit" in {p["name"] for p in list_presets() if p["source"] == "builtin"}
    cfg = load_preset("person-sdxl-adamw8bit")
    # docs/sdxl_train_network.md's example command, and train_SDXL-en.md's "highly recommended" UNet-only
    assert (cfg.optimizer_type, cfg.learning_rate, cfg.unet_lr, cfg.lr_scheduler) == ("AdamW8bit", 1e-4, 1e-4,
                                                                                        "constant")
    assert (cfg.network_dim, cfg.network_alpha, cfg.max_train_epochs, cfg.save_every_n_epochs) == (32, 16.0, 10, 1)
    assert cfg.network_train_unet_only and cfg.cache_text_encoder_outputs and cfg.cache_latents
    assert cfg.gradient_checkpointing and cfg.mixed_precision == "bf16" and cfg.resolution == "1024,1024"
    assert not cfg.shuffle_caption  # sd-scripts: cached text-encoder outputs cannot shuffle captions
    rep = check_config(cfg, for_training=False)
    assert rep.errors == [] and not any(w.field == "sample_prompts" for w in rep.warnings)
    entries = read_prompt_entries(Path(cfg.sample_prompts))
    assert [(e["width"], e["height"]) for e in entries] == [(1024, 1024), (832, 1216)]
    assert all("ohwx woman" in e["prompt"] for e in entries)
