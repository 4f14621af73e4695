"""Output-folder lock and injected write failures (disk full): clear error, earlier files intact, no temp left."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401  (monkeypatch targets it by dotted name)
from safetensors.torch import load_file

import library.fileio  # noqa: F401  (monkeypatch targets it by dotted name)
from library.config import TrainConfig
from library.errors import TrainingError
from library.training import lock
from library.training.events import Events
from library.training.trainer import train



@pytest.fixture(scope="module")
def data(shapes_data: Path) -> Path:
    return shapes_data


def config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(pretrained_model_name_or_path="tiny", train_data_dir=str(data), output_dir=str(out), output_name="t",
                caption_extension=".txt", resolution="64", train_batch_size=2, max_train_epochs=2,
                cache_latents=True, seed=2, learning_rate=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def write_lock(out: Path, pid: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / lock.LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "earlier"}))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_running_training_holds_the_folder(data: Path, tmp_path: Path) -> None:
    path = write_lock(tmp_path, os.getppid())  # a live process that is not us
    with pytest.raises(TrainingError) as err:
        train(config(data, tmp_path))
    assert f"process {os.getppid()}" in str(err.value)
    assert any(str(path) in p for p in err.value.problems)
    assert path.exists() and not list(tmp_path.glob("*.safetensors"))


def test_stale_lock_is_taken_over_with_a_note_and_released(data: Path, tmp_path: Path) -> None:
    pid = dead_pid()
    assert not lock.pid_alive(pid)
    write_lock(tmp_path, pid)
    (tmp_path / f".t.safetensors.lorasmith-{pid}-abc123xy.tmp").write_bytes(b"half")
    state_tmp = tmp_path / f".t-state.lorasmith-{pid}-xyz_0a1b.tmp"
    state_tmp.mkdir()
    (state_tmp / "network.safetensors").write_bytes(b"half")
    (state_tmp / ".tmpQw12Er").write_bytes(b"safetensors' own temp, inside our folder")
    (tmp_path / "keep.tmp").write_text("not ours: visible names are never touched")
    logs: list[str] = []

    class Log(Events):
        def on_log(self, info) -> None:
            logs.append(info["message"])

    result = train(config(data, tmp_path, max_train_epochs=1), Log())
    assert result.final_file.is_file()
    assert any("stale lock" in m and str(pid) in m for m in logs)
    assert not (tmp_path / lock.LOCK_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp", "t.safetensors"]
    assert any(f"removed .t-state.lorasmith-{pid}-xyz_0a1b.tmp" in m for m in logs)


def user_files(out: Path, pid: int) -> dict[str, bytes]:
    """Hidden names a user (or another program) may keep in an output folder; none of them is ours."""
    (out / ".tmp").mkdir(parents=True)
    (out / ".tmp" / "notes.txt").write_text("a user's folder named .tmp")
    files = {".zshrc.old": b"export A=1", ".tmpfoo": b"user", ".tmpAb12Cd": b"no pid: cannot be told apart",
             ".notes.old": b"x", f".t.safetensors.{pid}.old": b"an old-style name, no lorasmith tag",
             f".t.safetensors.lorasmith-{pid + 1}-abcd1234.tmp": b"another process's temp",
             f".lorasmith-{pid}-abcd1234.tmp": b"no destination name"}
    for name, blob in files.items():
        (out / name).write_bytes(blob)
    link_target = out / "target.txt"
    link_target.write_text("t")
    (out / f".x.lorasmith-{pid}-abcd1234.tmp").symlink_to(link_target)
    return files


def test_stale_lock_takeover_deletes_only_the_dead_runs_own_temp_files(tmp_path: Path) -> None:
    pid = dead_pid()
    write_lock(tmp_path, pid)
    files = user_files(tmp_path, pid)
    own = tmp_path / f".t.safetensors.lorasmith-{pid}-k2j4h6g8.tmp"
    own.write_bytes(b"half")
    nested = tmp_path / f".t-state.lorasmith-{pid}-q1w2e3r4.tmp"
    (nested / "sub").mkdir(parents=True)  # more than our state writer creates: left alone
    with lock.output_lock(tmp_path) as notes:
        pass
    assert not own.exists()
    assert any(own.name in n and n.startswith("removed") for n in notes), notes
    for name, blob in files.items():
        assert (tmp_path / name).read_bytes() == blob, name
    assert (tmp_path / ".tmp" / "notes.txt").read_text() == "a user's folder named .tmp"
    assert (tmp_path / f".x.lorasmith-{pid}-abcd1234.tmp").is_symlink() and (tmp_path / "target.txt").exists()
    assert (nested / "sub").is_dir() and any(n.startswith(f"left {nested.name}") for n in notes)


def test_stale_lock_restores_a_state_moved_aside_whose_replacement_never_arrived(tmp_path: Path) -> None:
    pid = dead_pid()
    write_lock(tmp_path, pid)
    aside = tmp_path / f".t-000001-state.lorasmith-{pid}-prev.old"
    aside.mkdir()
    (aside / "state.json").write_text('{"global_step": 4}')
    with lock.output_lock(tmp_path) as notes:
        pass
    assert (tmp_path / "t-000001-state" / "state.json").read_text() == '{"global_step": 4}'
    assert not aside.exists() and any(n.startswith("restored t-000001-state") for n in notes)


def test_temp_names_carry_the_tag_and_our_process_id(tmp_path: Path) -> None:
    """The file is written inside a private folder with our tag: a writer's own temp lands there too."""
    seen = []
    with library.fileio.atomic_path(tmp_path / "a.txt") as tmp:
        seen.append(tmp)
        tmp.write_text("x")
        (tmp.parent / ".tmpAbC123").write_text("a library's own temp")  # as safetensors >= 0.8 makes one
    folder = seen[0].parent
    assert seen[0].name == "a.txt" and folder.parent == tmp_path
    assert folder.name.startswith(f".a.txt.lorasmith-{os.getpid()}-") and folder.name.endswith(".tmp")
    assert library.fileio.own_temp_of(folder.name, os.getpid()) == ("a.txt", "tmp")
    assert library.fileio.own_temp_of(folder.name, os.getpid() + 1) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # nothing left beside the file


def test_lock_is_held_during_training(data: Path, tmp_path: Path) -> None:
    seen: list[dict] = []

    class Peek(Events):
        def on_step(self, info) -> None:
            seen.append(json.loads((tmp_path / lock.LOCK_NAME).read_text()))

    train(config(data, tmp_path, max_train_epochs=1), Peek())
    assert seen and all(s["pid"] == os.getpid() for s in seen)


class FailFrom(Events):
    """After the first save of `kind`, `target` (a write step) fails with ENOSPC."""

    def __init__(self, monkeypatch, target: str, kind: str) -> None:
        self.monkeypatch, self.target, self.kind = monkeypatch, target, kind

    def on_save(self, info) -> None:
        if info["kind"] != self.kind:
            return

        def disk_full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        obj, name = self.target.rsplit(".", 1)
        self.monkeypatch.setattr(eval(obj), name, disk_full)  # noqa: S307 - fixed test strings


def test_disk_full_on_lora_write_keeps_earlier_file(data: Path, tmp_path: Path, monkeypatch) -> None:
    events = FailFrom(monkeypatch, "library.fileio._fsync_file", "epoch")
    with pytest.raises(TrainingError) as err:
        train(config(data, tmp_path, save_every_n_epochs=1), events)
    assert "cannot write" in str(err.value) and "No space left" in str(err.value)
    assert "t.safetensors" in str(err.value)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["t-000001.safetensors"], names  # no temp file, no lock, no final file
    assert load_file(str(tmp_path / "t-000001.safetensors"))


def test_disk_full_on_state_write_keeps_earlier_state(data: Path, tmp_path: Path, monkeypatch) -> None:
    events = FailFrom(monkeypatch, "torch.save", "state")
    with pytest.raises(TrainingError) as err:
        train(config(data, tmp_path, save_every_n_epochs=1, save_state=True), events)
    assert "cannot write the training state" in str(err.value) and "t-state" in str(err.value)
    names = sorted(p.name for p in tmp_path.iterdir())
    # the epoch-1 file and its state survive; the final LoRA was written before the failing state
    assert names == ["t-000001-state", "t-000001.safetensors", "t.safetensors"], names
    assert sorted(p.name for p in (tmp_path / "t-000001-state").iterdir()) == [
        "config.json", "network.safetensors", "state.json", "train_state.pt"]
