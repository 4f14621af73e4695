"""SD2.x training on `tiny-sd2` (OpenCLIP-style text encoder, v-prediction from its scheduler config):
files, metadata, TensorBoard tags, names, a loss target that is v, exact resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from library.config import TrainConfig
from library.errors import ModelLoadError
from library.training import step as step_module
from library.training.trainer import train


def config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path="tiny-sd2", train_data_dir=str(data), output_dir=str(out), output_name="s2",
                caption_extension=".txt", resolution="64", train_batch_size=2, max_train_steps=2, network_dim=2,
                seed=11, learning_rate=1e-3, cache_latents=True)
    base.update(kw)
    return TrainConfig(**base)


def sd_alphas_cumprod() -> torch.Tensor:
    """tiny-sd2's schedule by hand: scaled_linear betas 0.00085..0.012 over 1000 steps."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def scalars(log_root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(sorted(log_root.rglob("events.out.tfevents.*"))[0]))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def run_recording(monkeypatch, cfg: TrainConfig) -> list[dict]:
    """Train, recording for every step the clean latents, the noise, the timesteps and the loss target."""
    records: list[dict] = []
    original_noise, original_loss = step_module.noise_batch, step_module.per_sample_loss

    def noise_spy(latents, *args, **kwargs):
        nb = original_noise(latents, *args, **kwargs)
        records.append({"x0": latents.detach().clone(), "nb": nb})
        return nb

    def loss_spy(pred, target, *args, **kwargs):
        records[-1]["target"] = target.detach().clone()
        return original_loss(pred, target, *args, **kwargs)

    monkeypatch.setattr(step_module, "noise_batch", noise_spy)
    monkeypatch.setattr(step_module, "per_sample_loss", loss_spy)
    train(cfg)
    return records


def assert_targets_are_v(records: list[dict]) -> None:
    """target = √ᾱ_t·ε − √(1−ᾱ_t)·x0 (Salimans & Ho 2022), ᾱ from the hand-computed schedule."""
    ac = sd_alphas_cumprod()
    assert records
    for r in records:
        nb = r["nb"]
        a = ac[nb.timesteps].view(-1, 1, 1, 1)
        v = (a.sqrt() * nb.noise.double() - (1 - a).sqrt() * r["x0"].double()).float()
        assert torch.allclose(r["target"], v, atol=1e-5), "the loss target is not v"


def test_sd2_run_trains_against_v(shapes_data: Path, tmp_path: Path, monkeypatch) -> None:
    records = run_recording(monkeypatch, config(shapes_data, tmp_path))
    assert len(records) == 2
    assert_targets_are_v(records)


def test_the_v_check_fails_when_the_target_is_swapped_to_noise(shapes_data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(step_module, "velocity", lambda latents, noise, timesteps, ac: noise)
    records = run_recording(monkeypatch, config(shapes_data, tmp_path))
    with pytest.raises(AssertionError, match="not v"):
        assert_targets_are_v(records)


@pytest.fixture(scope="module")
def full_run(shapes_data: Path, tmp_path_factory):
    out, logs = tmp_path_factory.mktemp("sd2_out"), tmp_path_factory.mktemp("sd2_logs")
    cfg = config(shapes_data, out, logging_dir=str(logs), max_train_steps=4, save_every_n_steps=2, save_state=True,
                 flip_aug=True, shuffle_caption=True, lr_scheduler="cosine", lr_warmup_steps=1)
    result = train(cfg)
    assert result.global_step == 4
    return out, logs


def test_files_names_metadata_and_tags(full_run) -> None:
    out, logs = full_run
    assert sorted(p.name for p in out.glob("*.safetensors")) == [
        "s2-step00000002.safetensors", "s2-step00000004.safetensors", "s2.safetensors"]
    with safe_open(str(out / "s2.safetensors"), "pt") as f:
        names = {k.split(".")[0] for k in f.keys()}
        md = f.metadata()
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names
    assert md["ss_base_model_version"] == "sd_v2_v"
    assert md["ss_v2"] == "True" and md["ss_v_parameterization"] == "True"
    assert md["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert md["modelspec.prediction_type"] == "v" and md["modelspec.implementation"] == "diffusers"
    tags = scalars(logs)
    assert {"loss/current", "loss/average", "loss/epoch_average", "lr/unet", "lr/textencoder"} <= set(tags)


def test_resume_is_bit_exact(full_run, shapes_data: Path, tmp_path: Path) -> None:
    out, _ = full_run
    again = tmp_path / "again"
    cfg = config(shapes_data, again, max_train_steps=4, save_every_n_steps=2, save_state=True, flip_aug=True,
                 shuffle_caption=True, lr_scheduler="cosine", lr_warmup_steps=1, resume=str(out / "s2-step00000002-state"))
    assert train(cfg).global_step == 4
    a, b = load_file(str(out / "s2.safetensors")), load_file(str(again / "s2.safetensors"))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_v2_flag_must_agree_with_the_model(shapes_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="--v2 was given but tiny is a Stable Diffusion 1.x model"):
        train(config(shapes_data, tmp_path, pretrained_model_name_or_path="tiny", v2=True))
