"""Atomic writes: the destination is either the old or the new file, never partial."""
from __future__ import annotations

import os
import stat

import pytest

from library.fileio import atomic_path, atomic_write_text


def test_replaces_and_uses_default_permissions(tmp_path):
    dest = tmp_path / "a.txt"
    atomic_write_text(dest, "one")
    atomic_write_text(dest, "two")
    assert dest.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failure_keeps_old_file_and_removes_temp(tmp_path):
    dest = tmp_path / "a.txt"
    atomic_write_text(dest, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.fixture(params=[0o022, 0o077, 0o002], ids=oct)
def umask(request):
    """Run the test under this umask, then restore the old one."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _modes(root) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in sorted(root.rglob("*"))}


def test_lora_file_gets_the_umask_mode(tmp_path, umask):
    """Issue 24: safetensors' writer made LoRA files 0600, unreadable for a webui running as another user."""
    import torch

    from library.lora.file import save_lora

    path = save_lora({"lora_unet_x.alpha": torch.tensor(1.0)}, tmp_path / "a.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    save_lora({"lora_unet_x.alpha": torch.tensor(2.0)}, path)  # overwriting keeps it too
    assert _modes(tmp_path) == {"a.safetensors": 0o666 & ~umask}


def test_every_atomic_writer_gets_the_umask_mode(tmp_path, umask):
    """Whatever a writer does to the temp file (safetensors, PIL, a chmod), the result has the umask mode."""
    from PIL import Image
    from safetensors.torch import save_file

    from library.sampling.infotext import save_png

    import torch

    with atomic_path(tmp_path / "t.safetensors") as tmp:
        save_file({"x": torch.zeros(1)}, str(tmp))
    with atomic_path(tmp_path / "odd.bin") as tmp:
        tmp.write_bytes(b"x")
        tmp.chmod(0o600)
    save_png(Image.new("RGB", (2, 2)), tmp_path / "s.png", "a prompt")
    atomic_write_text(tmp_path / "c.toml", "x = 1\n")
    assert _modes(tmp_path) == {n: 0o666 & ~umask for n in ("c.toml", "odd.bin", "s.png", "t.safetensors")}


def test_training_state_folder_gets_the_umask_mode(tmp_path, umask):
    """The state folder is written in a mkdtemp folder (0700) and moved into place."""
    import torch
    from safetensors.torch import save_file

    from library.training.state import atomic_folder

    for _ in range(2):  # a new folder, then one replacing it
        with atomic_folder(tmp_path / "run-state") as tmp:
            save_file({"x": torch.zeros(1)}, str(tmp / "network.safetensors"))
            (tmp / "state.json").write_text("{}")
    assert _modes(tmp_path) == {"run-state": 0o777 & ~umask, "run-state/network.safetensors": 0o666 & ~umask,
                                "run-state/state.json": 0o666 & ~umask}


def test_saved_base_models_get_the_umask_mode(tmp_path, umask):
    from library.models import build_tiny_bundle
    from library.models.saving import save_diffusers, save_single_file

    bundle = build_tiny_bundle(0)
    single = save_single_file(bundle, tmp_path / "m.safetensors")
    assert stat.S_IMODE(single.stat().st_mode) == 0o666 & ~umask
    folder = save_diffusers(bundle, tmp_path / "pipe")
    modes = _modes(folder)
    assert "unet/diffusion_pytorch_model.safetensors" in modes and "tokenizer/vocab.json" in modes
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    for name, mode in modes.items():
        assert mode == ((0o777 if (folder / name).is_dir() else 0o666) & ~umask), name


def test_current_umask_is_read_without_changing_it(umask):
    from library.fileio import _current_umask

    assert _current_umask() == umask
    assert os.umask(umask) == umask
