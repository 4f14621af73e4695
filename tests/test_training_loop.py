"""The loop's behaviour on the tiny model: adaptive-optimizer tags, step files, NaN stop, commands, learning."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from library.config import TrainConfig
from library.data.prepare import prepare_data
from library.errors import TrainingError
from library.training import step as step_module
from library.training.events import Commands, RecordingEvents
from library.training.setup import build_run
from library.training.step import StepMath
from library.training.trainer import train



@pytest.fixture(scope="module")
def data(shapes_data: Path) -> Path:
    return shapes_data


def scalars(log_root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(sorted(log_root.rglob("events.out.tfevents.*"))[0]))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path="tiny", train_data_dir=str(data), output_dir=str(out), output_name="t",
                caption_extension=".txt", resolution="64", enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128,
                train_batch_size=2, max_train_epochs=1, cache_latents=True, seed=3, learning_rate=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_dadaptadam_seed_guide_recipe_logs_d_lr_and_saves_steps(data: Path, tmp_path: Path) -> None:
    cfg = config(data, tmp_path / "out", logging_dir=str(tmp_path / "logs"), max_train_epochs=2,
                 optimizer_type="DAdaptAdam", optimizer_args=["decouple=True", "use_bias_correction=True", "weight_decay=0.20"],
                 learning_rate=1.0, unet_lr=1.0, text_encoder_lr=1.0, lr_scheduler="cosine",
                 save_every_n_steps=1, save_last_n_steps=1)
    result = train(cfg)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    # step files older than the last step are pruned (steps 1 and 2 of 4 gone)
    assert names == ["t-step00000003.safetensors", "t-step00000004.safetensors", "t.safetensors"]
    tags = scalars(tmp_path / "logs")
    for tag in ("lr/d*lr/unet", "lr/d*lr/textencoder", "lr/d*lr/group1"):
        assert [s for s, _ in tags[tag]] == [1, 2, 3, 4]
    # step 1: d is still its initial 1e-6 and cosine over 4 steps gives lr·0.5·(1+cos(π/4))
    assert tags["lr/d*lr/unet"][0][1] == pytest.approx(1e-6 * 0.5 * (1 + 2 ** -0.5), rel=1e-5)
    assert result.global_step == 4
    with safe_open(str(tmp_path / "out" / "t.safetensors"), "pt") as f:
        assert f.metadata()["ss_optimizer"].startswith("dadaptation.dadapt_adam.DAdaptAdam(decouple=True")


def test_prodigy_unet_only_tags_and_keys(data: Path, tmp_path: Path) -> None:
    cfg = config(data, tmp_path / "out", logging_dir=str(tmp_path / "logs"), optimizer_type="Prodigy",
                 learning_rate=1.0, network_train_unet_only=True, save_model_as="safetensors")
    train(cfg)
    tags = scalars(tmp_path / "logs")
    assert {"lr/unet", "lr/group0", "lr/d*lr/unet", "lr/d*lr/group0"} <= set(tags)
    assert "lr/textencoder" not in tags
    with safe_open(str(tmp_path / "out" / "t.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("lora_unet_") for k in keys)


def test_nan_loss_stops_with_step_and_images(data: Path, tmp_path: Path, monkeypatch) -> None:
    original = step_module.StepMath.loss
    calls = {"n": 0}

    def poisoned(self, batch):
        calls["n"] += 1
        loss = original(self, batch)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(step_module.StepMath, "loss", poisoned)
    events = RecordingEvents()
    with pytest.raises(TrainingError) as info:
        train(config(data, tmp_path / "out", max_train_epochs=2), events)
    message = str(info.value)
    assert "at step 2" in message and "nan" in message
    assert message.count(str(data / "1_ohwx shape")) == 2  # both images of the batch are named
    assert events.of("error") and not (tmp_path / "out" / "t.safetensors").exists()

    calls["n"] = 0
    result = train(config(data, tmp_path / "out2", max_train_epochs=2, skip_nan_steps=1))
    assert result.global_step == 4 and any("skipped" in n for n in result.warnings)


def test_stop_command_saves_an_interrupted_file(data: Path, tmp_path: Path) -> None:
    commands = Commands()
    commands.request("stop")
    result = train(config(data, tmp_path / "out", max_train_epochs=3, save_model_as="pt"), commands=commands)
    assert result.stopped and result.global_step == 1
    state = torch.load(tmp_path / "out" / "t-interrupted.pt", weights_only=True)
    assert any(k.endswith(".lora_up.weight") for k in state)


def test_loss_on_a_fixed_batch_and_noise_drops_after_training(data: Path, tmp_path: Path) -> None:
    cfg = config(data, tmp_path / "out", learning_rate=1e-2, network_dim=8, network_alpha=8)
    parts = build_run(cfg, prepare_data(cfg), seed=0)
    parts.dataset.set_epoch(1)
    batch = parts.dataset[(1, 0)]
    math = StepMath(parts)

    def fixed_loss() -> torch.Tensor:
        parts.rng.noise.manual_seed(1234)  # same noise and timesteps every time
        return math.loss(batch)

    with torch.no_grad():
        before = fixed_loss().item()
    opt = parts.optimizer.optimizer
    for _ in range(8):
        fixed_loss().backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        after = fixed_loss().item()
    assert after < 0.9 * before, (before, after)


def test_cyclic_gc_is_paused_during_steps_and_restored(data: Path, tmp_path: Path, monkeypatch) -> None:
    import gc

    seen: list[bool] = []
    loss = StepMath.loss
    monkeypatch.setattr(StepMath, "loss", lambda self, batch: (seen.append(gc.isenabled()), loss(self, batch))[1])
    assert gc.isenabled()
    train(config(data, tmp_path / "out", max_train_steps=2))
    assert seen == [False, False] and gc.isenabled()
