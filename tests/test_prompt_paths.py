"""Names in a prompt (`<lora:NAME>`, `__NAME__`) never reach a file outside their folder (issue 23).

A prompt is typed in the GUI (maybe by someone else, with --listen) or read from a
shared file: `../x`, `/abs/x` and symlinks out of the folder are refused with the
very text a missing name gets, so nothing outside is read and nothing can be probed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from gui.evaluate_tab import grid_command
from gui.safety import PathGuard
from library.cli import main
from library.errors import ConfigError, SamplingError
from library.sampling.dynamic_prompts import expand_prompt
from library.sampling.lora_stack import resolve_lora
from library.sampling.prompt_files import file_in_folder


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(allowed folder with loras/ and wildcards/, an outside folder holding real.safetensors/real.txt)."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for folder in (allowed / "loras" / "sub", allowed / "wildcards", outside):
        folder.mkdir(parents=True)
    (allowed / "loras" / "mine.safetensors").write_bytes(b"x")
    (allowed / "loras" / "sub" / "deep.safetensors").write_bytes(b"x")
    (allowed / "wildcards" / "color.txt").write_text("red\n")
    (outside / "real.safetensors").write_bytes(b"secret")
    (outside / "real.txt").write_text("the secret line\n")
    os.symlink(outside / "real.safetensors", allowed / "loras" / "link.safetensors")
    os.symlink(outside / "real.txt", allowed / "wildcards" / "link.txt")
    return allowed, outside


def lora_error(name: str, lora_dir: Path) -> str:
    with pytest.raises(SamplingError) as err:
        resolve_lora(name, lora_dir)
    return str(err.value).replace(name, "NAME")


def test_lora_tags_resolve_inside_the_folder_only(layout) -> None:
    allowed, outside = layout
    loras = allowed / "loras"
    assert resolve_lora("mine", loras) == (loras / "mine.safetensors").resolve()
    assert resolve_lora("sub/deep", loras) == (loras / "sub" / "deep.safetensors").resolve()
    missing = lora_error("nothere", loras)
    for name in ("../../outside/real", str(outside / "real"), str(outside / "real.safetensors"), "link",
                 "sub/../../../outside/real", "../loras/../../outside/real"):
        assert lora_error(name, loras) == missing, name  # same text as a missing name: nothing to probe
    assert lora_error("../../outside/fake", loras) == missing
    assert "mine" in missing and "real" not in missing  # lists what is inside, nothing outside


def test_lora_tag_without_a_folder_is_refused_even_for_an_existing_absolute_path(layout) -> None:
    _allowed, outside = layout
    with pytest.raises(SamplingError, match="no LoRA folder was given"):
        resolve_lora(str(outside / "real.safetensors"), None)


def wildcard_error(name: str, folder: Path) -> str:
    with pytest.raises(SamplingError) as err:
        expand_prompt(f"a __{name}__ cube", 1, folder)
    return str(err.value).replace(name, "NAME")


def test_wildcards_resolve_inside_the_folder_only(layout) -> None:
    allowed, outside = layout
    wildcards = allowed / "wildcards"
    assert expand_prompt("a __color__ cube", 1, wildcards) == "a red cube"
    missing = wildcard_error("nothere", wildcards)
    for name in ("../../outside/real", str(outside / "real"), "link"):
        assert wildcard_error(name, wildcards) == missing, name
    assert "secret" not in missing


@pytest.mark.parametrize("name", ["", "\x00", "a" * 5000, "/", ".", "..", "sub/", "C:\\x"])
def test_odd_names_are_just_not_found(layout, name: str) -> None:
    allowed, _outside = layout
    assert file_in_folder(allowed / "loras", name, ".safetensors") is None


def test_cli_sample_refuses_a_tag_that_leaves_lora_dir(layout, sdscripts_lora_dir, capsys) -> None:
    allowed, outside = layout
    shutil.copy(sdscripts_lora_dir / "tinylora.safetensors", outside / "real.safetensors")
    out = allowed / "out"
    rc = main(["sample", "--pretrained_model_name_or_path", "tiny", "--prompt", "a cube <lora:../../outside/real:1>",
               "--lora_dir", str(allowed / "loras"), "--steps", "1", "--width", "64", "--height", "64",
               "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "no ../../outside/real.safetensors in" in err and "Traceback" not in err
    assert not out.exists() or not list(out.glob("*.png"))


def grid_form(allowed: Path, prompt: str, **kw) -> dict:
    form = {"model": "tiny", "prompt": prompt, "negative": "", "steps": 1, "cfg": 7.0, "seed": 1, "width": 64,
            "height": 64, "sampler": "Euler a", "output_dir": str(allowed / "grids"), "lora": "", "lora_dir": "",
            "x_type": "Seed", "x_values": "1", "y_type": "(none)", "y_values": "", "z_type": "(none)", "z_values": ""}
    form.update(kw)
    return form


def test_gui_grid_cannot_load_a_lora_outside_allow_through_the_prompt(layout, sdscripts_lora_dir, capsys) -> None:
    allowed, outside = layout
    shutil.copy(sdscripts_lora_dir / "tinylora.safetensors", outside / "real.safetensors")
    guard = PathGuard.from_dirs([allowed])
    for tag in (str(outside / "real"), str(outside / "real.safetensors"), "../outside/real"):
        argv = grid_command(grid_form(allowed, f"a cube <lora:{tag}:1>"), guard)
        assert main(argv) == 2, tag
        assert "Traceback" not in capsys.readouterr().err
    assert not (allowed / "grids").exists() or not list((allowed / "grids").rglob("*.png"))
    with pytest.raises(ConfigError, match="outside"):  # the folder itself must be allowed
        grid_command(grid_form(allowed, "x", lora_dir=str(outside)), guard)


def test_gui_grid_lora_folder_field_reaches_the_cli(layout, sdscripts_lora_dir, capsys) -> None:
    allowed, outside = layout
    shutil.copy(sdscripts_lora_dir / "tinylora.safetensors", allowed / "loras" / "tinylora.safetensors")
    argv = grid_command(grid_form(allowed, "a cube <lora:tinylora:1>", lora_dir="loras"), PathGuard.from_dirs([allowed]))
    assert argv[argv.index("--lora_dir") + 1] == str((allowed / "loras").resolve())
    assert main(argv) == 0, capsys.readouterr().err
    assert list((allowed / "grids").rglob("*.png"))
