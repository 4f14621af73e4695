"""Full and read-only disks (issue 23), on REAL small filesystems (tmpfs, needs root) plus faked errors.

A full disk reaches us as SafetensorError or torch.save's RuntimeError ('unexpected pos'), not only as
OSError; a read-only output folder, logging_dir or progress_file used to fail as `OSError: [Errno 30]`
from the lock file. Both are named errors now, and no half-written file is left behind.
"""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from library import cli
from library.config import TrainConfig
from library.errors import ConfigError, DatasetError, TrainingError
from library.fileio import write_failure_reason
from library.training import preflight, saving, state as run_state
from library.training.events import Events
from library.training.rng import TrainingRNG
from library.training.trainer import train
from test_crash_failures import config  # the tiny cached-latents run those tests train


@pytest.fixture
def tmpfs():
    """Mount a fresh tmpfs of the asked size (optionally read-only); skip where mounting is impossible."""
    mounted: list[Path] = []

    def make(size: str = "4m", read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        where = Path(tempfile.mkdtemp(prefix="lorasmith-tmpfs-"))
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            where.rmdir()
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)
        where.rmdir()


def fill(folder: Path, leave: int = 0) -> Path:
    """Write a filler file until the filesystem is full (but for about `leave` bytes)."""
    filler = folder / "filler.bin"
    stat = os.statvfs(folder)
    todo = stat.f_bavail * stat.f_frsize - leave
    with open(filler, "wb", buffering=0) as fh:
        try:
            while todo > 0 or leave == 0:
                todo -= fh.write(b"\0" * min(65536, max(todo, 4096)))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


class FillAfter(Events):
    """Fills the output filesystem once the save of `kind` is done."""

    def __init__(self, folder: Path, kind: str) -> None:
        self.folder, self.kind, self.done = folder, kind, False

    def on_save(self, info) -> None:
        if info["kind"] == self.kind and not self.done:
            self.done = True
            fill(self.folder)


def test_real_full_disk_during_lora_save_is_named_and_leaves_no_half_file(shapes_data, tmpfs) -> None:
    out = tmpfs("8m")
    with pytest.raises(TrainingError) as err:
        train(config(shapes_data, out, save_every_n_epochs=1, save_state=True, max_train_epochs=3), FillAfter(out, "state"))
    text = str(err.value)
    assert "cannot write" in text and "t-000002.safetensors" in text and "No space left on device" in text
    assert "files saved before it are intact" in text and "free on the filesystem" in text
    names = sorted(p.name for p in out.iterdir())
    assert names == ["filler.bin", "t-000001-state", "t-000001.safetensors"], names  # no temp file, no lock
    assert load_file(str(out / "t-000001.safetensors"))
    assert load_file(str(out / "t-000001-state" / "network.safetensors"))


def test_real_full_disk_in_the_state_writer_is_named(shapes_data, tmpfs) -> None:
    """torch.save on a full disk raises RuntimeError('unexpected pos'), which used to escape raw."""
    out = tmpfs("1m")
    rng = TrainingRNG(0, torch.device("cpu"))
    net = torch.nn.Linear(2, 2)
    parts = SimpleNamespace(
        accelerator=SimpleNamespace(scaler=None), network=net, rng=rng, config=TrainConfig(),
        optimizer=SimpleNamespace(optimizer=SimpleNamespace(state_dict=lambda: {"big": torch.zeros(400_000)})),
        lr_scheduler=SimpleNamespace(state_dict=lambda: {}), dataset=SimpleNamespace(state_dict=lambda: {}))
    (out / "t-000001-state").mkdir()
    (out / "t-000001-state" / "keep.txt").write_text("earlier state")
    with pytest.raises(TrainingError) as err:
        run_state.save_state(out / "t-000001-state", parts, {"epoch": 1, "batch": 0, "global_step": 1}, {})
    text = str(err.value)
    assert "cannot write the training state" in text and "t-000001-state" in text and "No space left" in text
    assert sorted(p.name for p in out.iterdir()) == ["t-000001-state"]  # no temp folder left
    assert (out / "t-000001-state" / "keep.txt").read_text() == "earlier state"


def test_real_full_disk_for_safetensors_and_torch_save_is_recognised(tmpfs) -> None:
    out = tmpfs("256k")
    from safetensors.torch import save_file

    caught = []
    for name, write in (("a.safetensors", lambda p: save_file({"a": torch.zeros(100_000)}, str(p))),
                        ("a.pt", lambda p: torch.save({"a": torch.zeros(100_000)}, p))):
        with pytest.raises(Exception) as err:
            write(out / name)
        caught.append(type(err.value).__name__)
        assert "No space left on device" in write_failure_reason(err.value, out / name)
        (out / name).unlink(missing_ok=True)
    assert caught == ["SafetensorError", "RuntimeError"]  # neither is an OSError
    assert write_failure_reason(ValueError("unrelated"), out / "x") is None


def test_faked_enospc_from_the_lora_writer_is_named(tmp_path, monkeypatch) -> None:
    """save_lora writes the serialised bytes itself (lock.py: no safetensors `.tmpXXXXXX` names)."""
    from pathlib import Path

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    net = SimpleNamespace(save_weights=lambda path, dtype, md: __import__("library.lora.file", fromlist=["x"]).save_lora(
        {"lora_unet_x.alpha": torch.tensor(1.0)}, path, dtype, md))
    with pytest.raises(TrainingError, match=r"cannot write .*t\.safetensors: No space left on device"):
        saving.write_lora(net, tmp_path / "t.safetensors", "safetensors", None, {})
    assert list(tmp_path.iterdir()) == []


def test_space_warning_before_training(shapes_data, tmpfs) -> None:
    out = tmpfs("4m")
    fill(out, leave=20_000)
    logs: list[str] = []

    class Logs(Events):
        def on_log(self, info) -> None:
            logs.append(info["message"])

    with pytest.raises(TrainingError):
        train(config(shapes_data, out, max_train_epochs=1, save_state_on_train_end=True), Logs())
    assert any("one save needs about" in m and "the first save will fail" in m for m in logs), logs


def test_space_estimate_counts_pruned_saves(tmp_path) -> None:
    cfg = TrainConfig(save_every_n_epochs=1, save_last_n_epochs=2, save_state=True, optimizer_type="AdamW")
    assert preflight.planned_saves(cfg, epochs=10, total_steps=100) == (3, 3)
    lora, state = preflight.save_bytes(cfg, 1_000_000)
    assert lora == 4_000_000 + 65536 and state == 12_000_000 + 65536
    assert preflight.space_warnings(TrainConfig(output_dir=str(tmp_path / "new")), 1000, 1, 1) == []  # room enough


@pytest.mark.parametrize("field", ["output_dir", "logging_dir", "progress_file"])
def test_read_only_output_paths_are_named_before_models(field, shapes_data, tmpfs, tmp_path, monkeypatch, capsys) -> None:
    ro = tmpfs("1m", read_only=True)
    import library.training.trainer as trainer

    monkeypatch.setattr(trainer, "prepare_data", lambda *a, **k: (_ for _ in ()).throw(AssertionError("past checks")))
    values = {"output_dir": str(tmp_path / "out"), "logging_dir": None, "progress_file": None}
    values[field] = str(ro / "sub" / ("p.jsonl" if field == "progress_file" else "x"))
    argv = ["train", "--pretrained_model_name_or_path", "tiny", "--train_data_dir", str(shapes_data),
            "--caption_extension", ".txt", "--resolution", "64"]
    argv += [a for k, v in values.items() if v for a in (f"--{k}", v)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{field}: cannot create files in {ro}" in err and "Read-only file system" in err
    assert "Traceback" not in err
    with pytest.raises(ConfigError, match=field):
        preflight.check_writable(TrainConfig(**values))


def test_existing_read_only_progress_file_and_folder_given_as_file(tmpfs, tmp_path) -> None:
    ro = tmpfs("1m")
    (ro / "p.jsonl").write_text("old run\n")
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    with pytest.raises(ConfigError, match=r"progress_file: cannot write .*p\.jsonl: Read-only file system"):
        preflight.check_writable(TrainConfig(progress_file=str(ro / "p.jsonl")))
    with pytest.raises(ConfigError, match="is a folder"):
        preflight.check_writable(TrainConfig(progress_file=str(tmp_path)))
    preflight.check_writable(TrainConfig(output_dir=str(tmp_path / "new" / "deeper")))  # creatable: fine
    assert not (tmp_path / "new").exists()  # the check creates nothing


def test_read_only_cache_folder_with_cache_latents_to_disk(shapes_data, tmpfs) -> None:
    ro = tmpfs("1m", read_only=True)
    with pytest.raises(ConfigError, match="train_data_dir: cannot create files"):
        preflight.check_writable(TrainConfig(train_data_dir=str(ro), cache_latents_to_disk=True))
    preflight.check_writable(TrainConfig(train_data_dir=str(ro)))  # without the disk cache nothing is written there


def test_cli_train_on_full_disk_prints_one_screen(shapes_data, tmpfs) -> None:
    out = tmpfs("2m")
    fill(out)
    done = subprocess.run([sys.executable, "-m", "library.cli", "train", "--pretrained_model_name_or_path", "tiny",
                           "--train_data_dir", str(shapes_data), "--caption_extension", ".txt", "--resolution", "64",
                           "--output_dir", str(out), "--max_train_steps", "1", "--cache_latents"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "No space left on device" in done.stderr
    assert f"cannot create the lock file in {out}" in done.stderr
    assert not [p for p in out.iterdir() if p.suffix in (".safetensors", ".tmp")]


def test_samples_on_a_full_disk_are_skipped_with_a_note() -> None:
    from library.training.samples import SampleHook

    logs, samples = [], []

    class Sink(Events):
        def on_log(self, info) -> None:
            logs.append(info["message"])

        def on_sample(self, info) -> None:
            samples.append(info)

    hook = SampleHook.__new__(SampleHook)
    hook.parts, hook.events, hook.lines = SimpleNamespace(config=TrainConfig(output_dir="/o")), Sink(), ["a cat"]

    def full(epoch, step):
        raise OSError(errno.ENOSPC, "No space left on device", "/o/sample/x.png")

    hook._run = full
    assert hook.maybe(epoch=1, step=5, force=True) == []
    assert logs == ["samples not written at step 5: No space left on device (/o/sample/x.png)"]
    assert samples == [{"epoch": 1, "step": 5, "paths": []}]


def test_real_full_disk_in_the_latent_cache_is_named(tmpfs) -> None:
    from library.data.latent_cache import CachedLatents, write_cache

    out = tmpfs("256k")
    fill(out)
    with pytest.raises(DatasetError, match=r"cannot write the latent cache .*a_lorasmith\.safetensors: No space left"):
        write_cache(out / "a_lorasmith.safetensors", CachedLatents(torch.zeros(4, 64, 64)), {"format": "x"})
    assert sorted(p.name for p in out.iterdir()) == ["filler.bin"]


def test_real_full_disk_stops_tensorboard_logs_not_training(tmpfs) -> None:
    from library.training.tracking import TensorBoardLog

    out = tmpfs("256k")
    messages: list[str] = []
    tb = TensorBoardLog(out / "logs", on_problem=messages.append)
    fill(out)
    for step in range(3000):  # the writer's buffer fills, then its file write fails
        tb.scalars({"loss/current": 0.5, "lr/unet": 1e-4}, step)
    tb.flush()
    tb.close()
    assert len(messages) == 1 and "No space left on device" in messages[0] and "training goes on" in messages[0]
