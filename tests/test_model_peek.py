"""The family of a model from headers and configs only: what the VRAM plan and the GUI read before loading."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from library.errors import ModelLoadError
from library.models import load_model_bundle
from library.models.peek import config_family_of, peek_model
from library.models.saving import save_diffusers, save_single_file


@pytest.mark.parametrize("name,architecture,configs", [
    ("tiny", "sd1", "tiny"), ("tiny-world", "sd1", "tiny"), ("tiny-sdxl", "sdxl", "tiny-sdxl"),
    ("tiny-sd2", "sd2", "tiny-sd2")])
def test_builtin_names_need_no_file(name: str, architecture: str, configs: str) -> None:
    assert peek_model(name).architecture == architecture
    assert config_family_of(name) == configs


@pytest.mark.parametrize("builtin,architecture,configs", [
    ("tiny", "sd1", "sd15"), ("tiny-sd2", "sd2", "sd2-768-v"), ("tiny-sdxl", "sdxl", "sdxl")])
def test_single_files_and_folders_are_told_apart_from_their_headers(tmp_path: Path, builtin: str, architecture: str,
                                                                    configs: str) -> None:
    bundle = load_model_bundle(builtin)
    single = save_single_file(bundle, tmp_path / f"{builtin}.safetensors")
    folder = save_diffusers(bundle, tmp_path / f"{builtin}-folder")
    for path in (single, folder):
        assert peek_model(str(path)).architecture == architecture
        assert config_family_of(str(path)) == configs  # real-sized configs: the file's shapes are what it stands for


def test_another_kind_of_model_gets_the_loaders_refusal_and_the_estimate_falls_back(tmp_path: Path) -> None:
    inpaint = tmp_path / "inpaint.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 9, 3, 3),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(768)}, str(inpaint))
    with pytest.raises(ModelLoadError, match="inpainting"):
        peek_model(str(inpaint))
    assert config_family_of(str(inpaint)) == "sd15"


def test_a_pickle_or_a_missing_path_is_unknown_not_guessed(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not read")
    assert peek_model(str(ckpt)) is None and peek_model(str(tmp_path / "nothing.safetensors")) is None
    assert config_family_of(str(ckpt), default="sd15") == "sd15"
