"""Exact resume on the tiny model: a resumed run equals, bit for bit, the run that was never stopped."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from library.config import TrainConfig
from library.errors import ConfigError
from library.training.events import Commands, Events
from library.training.trainer import train



@pytest.fixture(scope="module")
def data(shapes_data: Path) -> Path:
    return shapes_data


def config(data: Path, out: Path, **kw) -> TrainConfig:
    # AdamW with warmup + cosine: optimizer moments and the LR position both matter on resume;
    # caption shuffle and flip make the data order/augmentation RNG matter too.
    base = dict(pretrained_model_name_or_path="tiny", train_data_dir=str(data), output_dir=str(out), output_name="t",
                caption_extension=".txt", resolution="64", train_batch_size=2, max_train_epochs=3,
                cache_latents=False, flip_aug=True, shuffle_caption=True, seed=5, learning_rate=1e-3,
                optimizer_type="AdamW", lr_scheduler="cosine", lr_warmup_steps=2, network_dropout=0.1)
    base.update(kw)
    return TrainConfig(**base)


def lora(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def full_run(data: Path, tmp_path_factory) -> Path:
    """3 epochs x 2 steps with states after epoch 1, every 3 steps, and at the end."""
    out = tmp_path_factory.mktemp("full")
    result = train(config(data, out, save_state=True, save_every_n_epochs=1, save_every_n_steps=3))
    assert result.global_step == 6
    return out


def test_state_folders_hold_everything(full_run: Path) -> None:
    names = sorted(p.name for p in full_run.iterdir())
    for folder in ("t-000001-state", "t-000002-state", "t-step00000003-state", "t-step00000006-state", "t-state"):
        assert folder in names
        assert sorted(p.name for p in (full_run / folder).iterdir()) == [
            "config.json", "network.safetensors", "state.json", "train_state.pt"]
    assert not [n for n in names if n.startswith(".")], "a temp folder was left behind"
    assert json.loads((full_run / "t-000001-state" / "state.json").read_text()) == {
        "format": 1, "epoch": 2, "batch": 0, "global_step": 2}
    assert json.loads((full_run / "t-step00000003-state" / "state.json").read_text())["batch"] == 1
    state = torch.load(full_run / "t-state" / "train_state.pt", weights_only=True)
    assert {"optimizer", "lr_scheduler", "rng", "dataset", "position", "recorder"} <= set(state)
    assert state["lr_scheduler"]["last_epoch"] == 6
    assert {"python", "numpy", "torch", "noise", "seed"} <= set(state["rng"])


@pytest.mark.parametrize("folder", ["t-000001-state", "t-step00000003-state"])
def test_resume_after_epoch_or_mid_epoch_is_bit_exact(data: Path, full_run: Path, tmp_path: Path, folder: str) -> None:
    result = train(config(data, tmp_path, resume=str(full_run / folder), save_every_n_epochs=1))
    assert result.global_step == 6
    assert_same(lora(tmp_path / "t.safetensors"), lora(full_run / "t.safetensors"))
    if folder == "t-000001-state":  # the epoch files after the resume point match too
        assert_same(lora(tmp_path / "t-000002.safetensors"), lora(full_run / "t-000002.safetensors"))


class StopAt(Events):
    def __init__(self, commands: Commands, step: int) -> None:
        self.commands, self.step = commands, step

    def on_step(self, info) -> None:
        if info["step"] == self.step:
            self.commands.request("stop")


def test_stop_command_then_resume_latest_is_bit_exact(data: Path, full_run: Path, tmp_path: Path) -> None:
    commands = Commands()
    stopped = train(config(data, tmp_path), StopAt(commands, 3), commands)
    assert stopped.stopped and stopped.global_step == 3
    assert (tmp_path / "t-interrupted.safetensors").is_file()
    assert json.loads((tmp_path / "t-state" / "state.json").read_text())["global_step"] == 3
    result = train(config(data, tmp_path, resume="latest"))
    assert not result.stopped and result.global_step == 6
    assert_same(lora(tmp_path / "t.safetensors"), lora(full_run / "t.safetensors"))


def test_changed_config_is_refused_unless_allowed(data: Path, full_run: Path, tmp_path: Path) -> None:
    state = str(full_run / "t-step00000006-state")
    with pytest.raises(ConfigError) as err:
        train(config(data, tmp_path, resume=state, learning_rate=2e-3, network_dim=8))
    text = str(err.value) + "\n".join(err.value.problems)
    assert "learning_rate: 0.001 -> 0.002" in text and "network_dim" in text
    # output place, saving cadence and logs may change freely
    result = train(config(data, tmp_path, resume=state, output_name="u", save_every_n_epochs=2,
                          resume_allow_changes=False))
    assert result.global_step == 6 and (tmp_path / "u.safetensors").is_file()
    allowed = train(config(data, tmp_path / "b", resume=state, learning_rate=2e-3, resume_allow_changes=True))
    assert any("learning_rate" in w for w in allowed.warnings)


def test_resume_latest_without_state_and_bad_folder(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no saved state"):
        train(config(data, tmp_path, resume="latest"))
    (tmp_path / "x-state").mkdir()
    with pytest.raises(ConfigError, match="not a lorasmith state folder"):
        train(config(data, tmp_path, resume=str(tmp_path / "x-state")))


def test_pruned_files_take_their_state_folders(data: Path, tmp_path: Path) -> None:
    train(config(data, tmp_path, max_train_epochs=2, save_state=True, save_every_n_steps=1, save_last_n_steps=1))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["t-state", "t-step00000003-state", "t-step00000003.safetensors",
                     "t-step00000004-state", "t-step00000004.safetensors", "t.safetensors"], names


def test_mid_epoch_state_needs_the_same_process_count(full_run: Path) -> None:
    from library.training.state import check_processes, load_train_state

    mid = load_train_state(full_run / "t-step00000003-state")
    assert mid["num_processes"] == 1
    with pytest.raises(ConfigError, match="saved mid-epoch with 1 process"):
        check_processes(full_run, mid, 2)
    check_processes(full_run, load_train_state(full_run / "t-000001-state"), 2)  # epoch boundary: any count


def test_optimizer_state_of_another_layout_is_refused_with_the_way_out(data: Path, full_run: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "t-step00000006-state"
    shutil.copytree(full_run / "t-step00000006-state", folder)
    state = torch.load(folder / "train_state.pt", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    group["params"] = list(range(len(group["params"]) + 3))  # as a per-tensor (pre-flat) optimizer saved it
    torch.save(state, folder / "train_state.pt")
    with pytest.raises(ConfigError, match="saved optimizer state does not fit") as err:
        train(config(data, tmp_path / "out", resume=str(folder)))
    assert any("--network_weights" in p for p in err.value.problems)


# Edits of a real train_state.pt, each once a traceback or a silently accepted resume (issue 23).
HOSTILE_STATES = {
    "no_optimizer": (lambda s: s.pop("optimizer"), "optimizer: missing"),
    "huge_global_step": (lambda s: s["position"].update(global_step=10**15), "position.global_step = 1000000000000000"),
    "string_epoch": (lambda s: s["position"].update(epoch="2"), "position.epoch = 2"),
    "extra_position_field": (lambda s: s["position"].update(evil=1), "position.evil: not a position field"),
    "position_list": (lambda s: s.update(position=[1, 0, 3]), "position: is a list"),
    "no_rng": (lambda s: s.pop("rng"), "rng: missing"),
    "bad_rng": (lambda s: s["rng"].update(python=[1]), "the saved random generators cannot be restored"),
    "scheduler_attr": (lambda s: s["lr_scheduler"].update(base_lrs=["x"]), "lr_scheduler.base_lrs"),
    "scheduler_foreign_key": (lambda s: s["lr_scheduler"].update(step="x"), "lr_scheduler.step"),
    "optimizer_no_groups": (lambda s: s["optimizer"].pop("param_groups"), "optimizer: lacks"),
    "moment_shape": (lambda s: [v.update(exp_avg=torch.zeros(3)) for v in s["optimizer"]["state"].values()],
                     "exp_avg is shape (3,)"),
    "group_setting": (lambda s: s["optimizer"]["param_groups"][0].update(amsgrad=True), "amsgrad = True"),
    "group_setting_missing": (lambda s: s["optimizer"]["param_groups"][0].pop("betas"), "betas is missing"),
    "slot_missing": (lambda s: [v.pop("exp_avg") for v in s["optimizer"]["state"].values()], "this optimizer keeps"),
    "step_text": (lambda s: [v.update(step="x") for v in s["optimizer"]["state"].values()],
                  "does not fit this run's optimizer"),
    "losses_text": (lambda s: s["recorder"].update(losses=["x"]), "the saved loss history cannot be restored"),
    "nan_steps_negative": (lambda s: s.update(nan_steps=-1), "nan_steps = -1"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_STATES))
def test_hostile_state_is_refused_naming_the_part(data: Path, full_run: Path, tmp_path: Path, kind: str) -> None:
    import shutil

    edit, expected = HOSTILE_STATES[kind]
    folder = tmp_path / "t-step00000003-state"
    shutil.copytree(full_run / "t-step00000003-state", folder)
    state = torch.load(folder / "train_state.pt", weights_only=True)
    edit(state)
    torch.save(state, folder / "train_state.pt")
    with pytest.raises(ConfigError) as err:
        train(config(data, tmp_path / "out", resume=str(folder)))
    assert expected in str(err.value), str(err.value)
    assert not list((tmp_path / "out").glob("*.safetensors"))


def test_changed_learning_rate_is_applied_from_the_resume_on(data: Path, full_run: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    """--resume_allow_changes with a new learning rate: the steps use it, and the metadata names it (issue 23)."""
    from safetensors import safe_open

    from library.training import schedulers

    calls: list[tuple[object, list[float]]] = []
    original = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        calls.append((self, [g["lr"] for g in self.param_groups]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    logs: list[str] = []

    class Log(Events):
        def on_log(self, info) -> None:
            logs.append(info["message"])

    result = train(config(data, tmp_path, resume=str(full_run / "t-000001-state"), learning_rate=4e-3,
                          resume_allow_changes=True), Log())
    used = [lrs for opt, lrs in calls if opt is calls[-1][0]]  # the training's optimizer, not restore's probe copy
    assert result.global_step == 6 and len(used) == 4  # steps 3-6; the state was saved after step 2
    expected = [4e-3 * schedulers.cosine(step, 2, 6) for step in range(2, 6)]  # warmup 2, 6 steps (config above)
    for lrs, want in zip(used, expected):
        assert lrs == pytest.approx([want] * len(lrs), rel=1e-12)
    assert any("0.001 in the state, 0.004 from now on" in m for m in logs), logs
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as fh:
        assert fh.metadata()["ss_learning_rate"] == "0.004"


def test_optimizer_changes_are_refused_on_resume_even_when_allowed(data: Path, full_run: Path, tmp_path: Path) -> None:
    state = str(full_run / "t-000001-state")
    for change in (dict(optimizer_type="Lion"), dict(optimizer_args=["weight_decay=0.5"])):
        with pytest.raises(ConfigError, match="cannot change on resume") as err:
            train(config(data, tmp_path, resume=state, resume_allow_changes=True, **change))
        assert next(iter(change)) in str(err.value) and any("--network_weights" in p for p in err.value.problems)


@pytest.mark.parametrize("optimizer", [
    dict(optimizer_type="AdaFactor", learning_rate=1e-3,
         optimizer_args=["relative_step=True", "scale_parameter=True", "warmup_init=True"]),
    dict(optimizer_type="Prodigy", learning_rate=1.0),
])
def test_state_checks_accept_other_optimizers_states(data: Path, tmp_path: Path, optimizer: dict) -> None:
    """The optimizer checks must not refuse a genuine state (Adafactor keeps its lr as a tensor, Prodigy its d)."""
    kw = dict(lr_scheduler="constant", network_dropout=None, max_train_epochs=2, **optimizer)
    full = train(config(data, tmp_path / "full", save_state=True, save_every_n_epochs=1, **kw))
    resumed = train(config(data, tmp_path / "res", resume=str(tmp_path / "full" / "t-000001-state"), **kw))
    assert_same(lora(full.final_file), lora(resumed.final_file))
