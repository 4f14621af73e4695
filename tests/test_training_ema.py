"""EMA of the LoRA weights (--ema_decay): the math by hand, the files, exact resume, bad decays."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from library.config import TrainConfig
from library.config_io import config_from_mapping
from library.config_validate import validate
from library.errors import ConfigError
from library.training.ema import (
    EmaSettings,
    LoraEMA,
    ema_decay_at,
    ema_file_path,
    ema_state_problems,
)


class Toy(torch.nn.Module):
    """Two parameters and a buffer, like a LoRA module's down/up weights and alpha."""

    def __init__(self) -> None:
        super().__init__()
        self.down = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        self.up = torch.nn.Parameter(torch.tensor([[0.0]]))
        self.register_buffer("alpha", torch.tensor(4.0))


def test_decay_warmup_is_onetrainers_ramp() -> None:
    assert ema_decay_at(0.999, 1, warmup=True) == pytest.approx(2 / 11)
    assert ema_decay_at(0.999, 90, warmup=True) == pytest.approx(91 / 100)
    assert ema_decay_at(0.9, 1000, warmup=True) == 0.9  # the ramp passed the decay
    assert ema_decay_at(0.5, 1, warmup=False) == 0.5


def test_ema_math_against_hand_computed_values() -> None:
    net = Toy()
    ema = LoraEMA(net, EmaSettings(decay=0.5, every=1, warmup=False))
    with torch.no_grad():
        net.down.copy_(torch.tensor([3.0, 4.0]))
        net.up.fill_(2.0)
    ema.after_step(1)
    # 0.5 * [1, 2] + 0.5 * [3, 4] = [2, 3];  0.5 * 0 + 0.5 * 2 = 1
    assert ema.tensors(net)["down"].tolist() == [2.0, 3.0]
    assert ema.tensors(net)["up"].tolist() == [[1.0]]
    with torch.no_grad():
        net.down.copy_(torch.tensor([6.0, 7.0]))
    ema.after_step(2)
    # 0.5 * [2, 3] + 0.5 * [6, 7] = [4, 5]; up unchanged at 2: 0.5 * 1 + 0.5 * 2 = 1.5
    assert ema.tensors(net)["down"].tolist() == [4.0, 5.0]
    assert ema.tensors(net)["up"].tolist() == [[1.5]]
    assert ema.tensors(net)["alpha"].item() == 4.0  # buffers are copied, not averaged
    assert ema.updates == 2


def test_ema_update_every_and_warmup() -> None:
    net = Toy()
    ema = LoraEMA(net, EmaSettings(decay=0.99, every=2, warmup=True))
    with torch.no_grad():
        net.down.copy_(torch.tensor([12.0, 2.0]))
    assert not ema.after_step(1)  # every 2 steps: nothing at step 1
    assert ema.tensors(net)["down"].tolist() == [1.0, 2.0]
    assert ema.after_step(2)
    # decay at step 2 = min(0.99, 3/12) = 0.25: 0.25 * 1 + 0.75 * 12 = 9.25; 2 stays 2 exactly
    assert ema.tensors(net)["down"].tolist() == [9.25, 2.0]


def test_ema_state_round_trip_and_bad_states() -> None:
    net = Toy()
    ema = LoraEMA(net, EmaSettings(decay=0.5))
    with torch.no_grad():
        net.down.add_(2.0)
    ema.after_step(1)
    other = LoraEMA(Toy(), EmaSettings(decay=0.5))
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow[0], ema.shadow[0]) and other.updates == 1
    shadow = dict(zip(ema.names, ema.shadow))
    assert ema_state_problems({"updates": 1, "tensors": {"down": torch.zeros(3)}}, shadow) == [
        "ema: up missing", "ema: down is (3,) torch.float32, expected (2,) float32"]
    with pytest.raises(ValueError, match="not a whole number"):
        other.load_state_dict({"updates": -1, "tensors": ema.state_dict()["tensors"]})


@pytest.mark.parametrize("decay", [0, 0.0, 1, 1.0, 1.5, -0.2])
def test_bad_decay_refused_by_name(decay: float) -> None:
    cfg = config_from_mapping({"ema_decay": decay}, source="test.toml")
    with pytest.raises(ConfigError) as info:
        validate(cfg, for_training=False)
    assert "ema_decay" in str(info.value) and "above 0 and below 1" in str(info.value)


def test_good_decay_accepted() -> None:
    validate(TrainConfig(ema_decay=0.999), for_training=False)


def test_ema_file_names() -> None:
    assert ema_file_path(Path("o/t-000003.safetensors")) == Path("o/t-000003-ema.safetensors")
    assert ema_file_path(Path("o/t.safetensors")) == Path("o/t-ema.safetensors")


# --- training on the tiny model ----------------------------------------------------------

def config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path="tiny", train_data_dir=str(data), output_dir=str(out), output_name="t",
                caption_extension=".txt", resolution="64", train_batch_size=2, max_train_epochs=3,
                cache_latents=False, flip_aug=True, seed=5, learning_rate=1e-3, optimizer_type="AdamW",
                lr_scheduler="cosine", lr_warmup_steps=2, ema_decay=0.9, save_every_n_epochs=1)
    base.update(kw)
    return TrainConfig(**base)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def ema_run(shapes_data: Path, tmp_path_factory) -> Path:
    from library.training.trainer import train

    out = tmp_path_factory.mktemp("ema")
    result = train(config(shapes_data, out, save_state=True, save_every_n_steps=3))
    assert result.global_step == 6
    assert [f.name for f in result.ema_files] == [  # in the order they were saved
        "t-000001-ema.safetensors", "t-step00000003-ema.safetensors", "t-000002-ema.safetensors",
        "t-step00000006-ema.safetensors", "t-ema.safetensors"]
    return out


def test_ema_files_beside_each_file_with_same_keys(ema_run: Path) -> None:
    for stem in ("t-000001", "t-000002", "t"):
        normal, ema = tensors(ema_run / f"{stem}.safetensors"), tensors(ema_run / f"{stem}-ema.safetensors")
        assert normal.keys() == ema.keys()
        assert all(normal[k].shape == ema[k].shape and normal[k].dtype == ema[k].dtype for k in normal)
        moved = [k for k in normal if "lora_" in k and not torch.equal(normal[k], ema[k])]
        assert moved, "the EMA file equals the trained weights"
        alphas = [k for k in normal if k.endswith(".alpha")]
        assert alphas and all(torch.equal(normal[k], ema[k]) for k in alphas)
    with safe_open(str(ema_run / "t-ema.safetensors"), "pt") as f:
        md = f.metadata()
    assert md["lorasmith_ema"] == "true" and float(md["lorasmith_ema_decay"]) == 0.9
    assert md["lorasmith_ema_updates"] == "6" and md["ss_epoch"] == "3"
    with safe_open(str(ema_run / "t.safetensors"), "pt") as f:
        assert "lorasmith_ema" not in f.metadata()


def test_ema_lies_between_start_and_end(ema_run: Path, shapes_data: Path) -> None:
    """An average of the trajectory: closer to the epoch-2 weights than the final weights are, on the whole."""
    e2, final, ema = (tensors(ema_run / n) for n in ("t-000002.safetensors", "t.safetensors", "t-ema.safetensors"))
    keys = [k for k in final if k.endswith("lora_down.weight")]
    dist = lambda a, b: sum(float((a[k] - b[k]).pow(2).sum()) for k in keys)
    assert dist(ema, e2) < dist(final, e2)


@pytest.mark.parametrize("folder", ["t-000001-state", "t-step00000003-state"])
def test_resume_with_ema_is_bit_exact(shapes_data: Path, ema_run: Path, tmp_path: Path, folder: str) -> None:
    from library.training.trainer import train

    state = torch.load(ema_run / folder / "train_state.pt", weights_only=True)
    assert set(state["ema"]) == {"updates", "tensors"}
    result = train(config(shapes_data, tmp_path, resume=str(ema_run / folder)))
    assert result.global_step == 6
    assert_same(tensors(tmp_path / "t-ema.safetensors"), tensors(ema_run / "t-ema.safetensors"))
    assert_same(tensors(tmp_path / "t.safetensors"), tensors(ema_run / "t.safetensors"))
    if folder == "t-000001-state":
        assert_same(tensors(tmp_path / "t-000002-ema.safetensors"), tensors(ema_run / "t-000002-ema.safetensors"))


def test_pruned_epoch_files_take_their_ema_files(shapes_data: Path, tmp_path: Path) -> None:
    from library.training.trainer import train

    train(config(shapes_data, tmp_path, max_train_epochs=3, save_last_n_epochs=1))
    names = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert names == ["t-000002-ema.safetensors", "t-000002.safetensors", "t-ema.safetensors", "t.safetensors"]


def test_plan_shows_the_ema(shapes_data: Path, tmp_path: Path) -> None:
    from library.data.plan import format_plan
    from library.data.prepare import prepare_data

    text = format_plan(prepare_data(config(shapes_data, tmp_path, ema_update_every=2)).plan)
    assert "EMA of the LoRA weights:" in text and "decay 0.9, every 2 step(s)" in text
    assert "EMA" not in format_plan(prepare_data(config(shapes_data, tmp_path, ema_decay=None)).plan)


@pytest.mark.parametrize("optimizer", ["AdamW", "AdaFactor"])  # one flat tensor per group / per-tensor steps
def test_trainer_updates_the_ema_after_each_step_with_the_warmup_decay(shapes_data: Path, tmp_path: Path,
                                                                       optimizer: str) -> None:
    """lora_up starts at zero, so by hand: after step 1, ema = (1 - d1)·up1 with d1 = min(0.9, 2/11);
    after step 2, ema2 = ema1 + (1 - d2)·(up2 - ema1) with d2 = min(0.9, 3/12)."""
    from library.training.trainer import train

    train(config(shapes_data, tmp_path, max_train_epochs=1, save_every_n_epochs=None, save_every_n_steps=1,
                 optimizer_type=optimizer, lr_scheduler="constant", lr_warmup_steps=0))
    up = lambda name: {k: v for k, v in tensors(tmp_path / name).items() if k.endswith("lora_up.weight")}
    p1, p2 = up("t-step00000001.safetensors"), up("t-step00000002.safetensors")
    e1, e2 = up("t-step00000001-ema.safetensors"), up("t-step00000002-ema.safetensors")
    d1, d2 = 2 / 11, 3 / 12
    assert any(v.abs().max() > 0 for v in p1.values())
    for k in p1:
        torch.testing.assert_close(e1[k], (1 - d1) * p1[k], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(e2[k], e1[k] + (1 - d2) * (p2[k] - e1[k]), rtol=1e-5, atol=1e-9)


def test_resume_from_a_state_without_ema_starts_the_average_at_the_resumed_weights(shapes_data: Path,
                                                                                    tmp_path: Path) -> None:
    from library.training.events import RecordingEvents
    from library.training.trainer import train

    first, second = tmp_path / "first", tmp_path / "second"
    train(config(shapes_data, first, ema_decay=None, max_train_epochs=2, save_state=True, lr_scheduler="constant",
                 lr_warmup_steps=0))
    events = RecordingEvents()
    train(config(shapes_data, second, max_train_epochs=2, lr_scheduler="constant", lr_warmup_steps=0,
                 save_every_n_steps=1, resume=str(first / "t-000001-state"), resume_allow_changes=True), events)
    assert any("holds no EMA" in info.get("message", "") for name, info in events.events if name == "log")
    up = lambda path: {k: v for k, v in tensors(path).items() if k.endswith("lora_up.weight")}
    p2, p3 = up(first / "t-000001.safetensors"), up(second / "t-step00000003.safetensors")
    e3 = up(second / "t-step00000003-ema.safetensors")
    d3 = 4 / 13  # min(0.9, (1 + 3) / (10 + 3))
    for k in p2:
        torch.testing.assert_close(e3[k], p2[k] + (1 - d3) * (p3[k] - p2[k]), rtol=1e-5, atol=1e-9)
