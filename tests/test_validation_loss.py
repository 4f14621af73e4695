"""The validation loss during training: fixed noise and timesteps, sd-scripts' tags, never trained on."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from library.config import TrainConfig
from library.data.prepare import prepare_data
from library.training.events import RecordingEvents
from library.training.setup import build_run
from library.training.step import StepMath
from library.training.trainer import Trainer, train
from library.scoring.timesteps import validation_timesteps
from library.training.validation import Validator, should_validate_epoch, should_validate_step


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 images in a `1_ohwx shape` folder."""
    from library.world.bucket_dataset import make_shapes_dataset

    root = tmp_path_factory.mktemp("val")
    make_shapes_dataset(root / "a", count=8)
    shutil.move(str(next((root / "a").iterdir())), root / "train" / "1_ohwx shape")
    return root / "train"


def config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path="tiny", train_data_dir=str(data), output_dir=str(out), output_name="t",
                caption_extension=".txt", resolution="64", enable_bucket=True, min_bucket_reso=64, max_bucket_reso=128,
                train_batch_size=2, max_train_epochs=1, cache_latents=True, seed=3, learning_rate=1e-3,
                validation_split=0.25)
    base.update(kw)
    return TrainConfig(**base)


def scalars(log_root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(sorted(log_root.rglob("events.out.tfevents.*"))[0]))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def test_timesteps_and_schedule_follow_sd_scripts() -> None:
    assert validation_timesteps(0, 1000) == [200, 400, 600, 800]  # sd-scripts' comment: 200, 400, 600, 800
    assert validation_timesteps(100, 900) == [260, 420, 580, 740]
    assert validation_timesteps(0, 10) == [2, 4, 6, 8]
    assert [e for e in range(1, 7) if should_validate_epoch(e, None)] == [1, 2, 3, 4, 5, 6]
    assert [e for e in range(1, 7) if should_validate_epoch(e, 2)] == [2, 4, 6]
    assert [s for s in range(1, 10) if should_validate_step(s, 4)] == [4, 8]
    assert not any(should_validate_step(s, None) for s in range(1, 10))


def test_same_weights_same_loss_and_training_rng_untouched(data: Path, tmp_path: Path) -> None:
    cfg = config(data, tmp_path / "o", network_train_unet_only=True)  # a frozen text encoder: its outputs are cached
    parts = build_run(cfg, prepare_data(cfg), 3)
    validator = Validator(parts, StepMath(parts))
    # held-out images are cached like the training ones: no VAE or text encoder call per validation
    assert len(parts.val_dataset.latents) == 2 and parts.val_dataset.text_encoder_outputs is not None
    assert validator.batches == 1 and validator.timesteps == [200, 400, 600, 800]  # 2 held-out images, batch 2
    rng_state = parts.rng.noise.get_state()
    first = validator.evaluate()
    second = validator.evaluate()
    assert first.loss == second.loss and first.losses == second.losses and len(first.losses) == 4
    assert torch.equal(parts.rng.noise.get_state(), rng_state)
    assert parts.network.training  # modes restored
    assert all(p.grad is None for p in parts.trainable_params)
    # a different validation seed draws different noise
    other = Validator(parts, StepMath(parts))
    other.seed = validator.seed + 1
    assert other.evaluate().loss != first.loss


def test_held_out_images_never_in_training_batches(data: Path, tmp_path: Path) -> None:
    cfg = config(data, tmp_path / "o", max_train_epochs=2)
    prepared = prepare_data(cfg)
    held = {it.image.path for lay in prepared.validation.layouts for it in lay.items}
    seen: set = set()
    parts = build_run(cfg, prepared, 3)
    trainer = Trainer(parts)
    original = trainer.math.loss

    def spy(batch, *a, **kw):
        if not a and not kw:  # a training step (validation passes a timestep)
            seen.update(Path(p) for p in batch["image_paths"])
        return original(batch, *a, **kw)

    trainer.math.loss = spy
    trainer.run()
    assert len(seen) == 6 and not seen & {Path(p) for p in held}


def test_training_logs_sd_scripts_tags_and_events(data: Path, tmp_path: Path) -> None:
    events = RecordingEvents()
    cfg = config(data, tmp_path / "o", logging_dir=str(tmp_path / "logs"), max_train_epochs=2, validate_every_n_steps=2,
                 learning_rate=1e-2)
    result = train(cfg, events)
    tags = scalars(tmp_path / "logs")
    assert [s for s, _ in tags["loss/validation/step_average"]] == [2, 4, 6]  # 3 steps per epoch, 6 in all
    assert [s for s, _ in tags["loss/validation/epoch_average"]] == [1, 2]
    assert "loss/validation/step_divergence" in tags and "loss/validation/epoch_divergence" in tags
    val_events = events.of("validation")
    assert [(e["kind"], e["step"]) for e in val_events] == [("step", 2), ("epoch", 3), ("step", 4), ("step", 6), ("epoch", 6)]
    assert all(e["batches"] == 1 and e["timesteps"] == [200, 400, 600, 800] for e in val_events)
    # after the last step and at the epoch's end the weights are the same: so is the loss, to the bit
    assert val_events[3]["val_loss"] == val_events[4]["val_loss"]
    # the tiny model learns the shapes: the held-out loss falls step after step (measured 1.139, 1.131, 1.120 with seed 3)
    step_vals = [e["val_loss"] for e in val_events if e["kind"] == "step"]
    assert step_vals[0] > step_vals[1] > step_vals[2]
    epoch_vals = [e["val_loss"] for e in events.of("epoch")]
    assert [v for _, v in result.validation_losses] == epoch_vals
    assert tags["loss/validation/epoch_average"][1][1] == pytest.approx(epoch_vals[1], rel=1e-6)
    # the step event carries the latest validation loss for the GUI (step 5: the one measured after step 4)
    steps = {e["step"]: e for e in events.of("step")}
    assert steps[1]["val_loss"] is None and steps[5]["val_loss"] == val_events[2]["val_loss"]
    with safe_open(str(result.final_file), "pt") as f:
        md = f.metadata()
    assert md["ss_num_validation_images"] == "2" and md["ss_validation_split"] == "0.25"
    assert md["ss_validate_every_n_steps"] == "2" and md["ss_num_train_images"] == "6"


def test_max_validation_steps_limits_batches(data: Path, tmp_path: Path) -> None:
    cfg = config(data, tmp_path / "o", validation_split=0.5, train_batch_size=1, max_validation_steps=3)
    parts = build_run(cfg, prepare_data(cfg), 3)
    assert len(parts.val_dataset) == 4
    result = Validator(parts, StepMath(parts)).evaluate()
    assert result.batches == 3 and len(result.losses) == 12


def test_no_split_no_validation(data: Path, tmp_path: Path) -> None:
    events = RecordingEvents()
    cfg = config(data, tmp_path / "o", validation_split=0.0, logging_dir=str(tmp_path / "logs"))
    result = train(cfg, events)
    assert result.validation_losses == [] and events.of("validation") == []
    assert not any(t.startswith("loss/validation") for t in scalars(tmp_path / "logs"))


def test_console_prints_validation_lines() -> None:
    import io

    from library.training.console import ConsoleEvents

    out = io.StringIO()
    console = ConsoleEvents(out, bar=False)
    console.on_validation({"kind": "step", "step": 4, "epoch": 1, "val_loss": 0.5, "divergence": -0.25})
    console.on_epoch({"epoch": 1, "num_epochs": 2, "avg_loss": 0.75, "step": 6, "val_loss": 0.5})
    console.on_epoch({"epoch": 2, "num_epochs": 2, "avg_loss": 0.75, "step": 6, "val_loss": None})
    assert out.getvalue().splitlines() == [
        "step 4: validation loss 0.5000 (divergence from training -0.2500)",
        "epoch 1/2 done: average loss 0.7500, validation loss 0.5000",
        "epoch 2/2 done: average loss 0.7500",
    ]


def test_resumed_run_measures_the_same_validation_losses(data: Path, tmp_path: Path) -> None:
    full = train(config(data, tmp_path / "a", max_train_epochs=2, save_state=True, save_every_n_epochs=1))
    state = tmp_path / "a" / "t-000001-state"
    assert state.is_dir()
    resumed = train(config(data, tmp_path / "b", max_train_epochs=2, resume=str(state)))
    assert len(full.validation_losses) == 2
    assert resumed.validation_losses == full.validation_losses  # epoch 1 from the state, epoch 2 measured again


def test_progress_file_carries_validation_to_the_gui(tmp_path: Path) -> None:
    from gui.progress import Progress
    from library.training.events import JsonLinesEvents

    sink = JsonLinesEvents(tmp_path / "p.jsonl")
    sink.on_validation({"kind": "step", "step": 4, "epoch": 1, "val_loss": 0.5, "divergence": -0.1})
    sink.on_validation({"kind": "epoch", "step": 6, "epoch": 1, "val_loss": 0.25, "divergence": -0.1})
    sink.close()
    progress = Progress()
    for line in (tmp_path / "p.jsonl").read_text().splitlines():
        progress.apply(json.loads(line))
    assert progress.val_loss == 0.25 and progress.val_losses == [(4, 0.5), (6, 0.25)]
