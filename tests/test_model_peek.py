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
    assert peek_model(name).detection.architecture == architecture
    assert config_family_of(name) == configs


@pytest.mark.parametrize("builtin,architecture,configs", [
    ("tiny", "sd1", "sd15"), ("tiny-sd2", "sd2", "sd2-768-v"), ("tiny-sdxl", "sdxl", "sdxl")])
def test_single_files_and_folders_are_told_apart_from_their_headers(tmp_path: Path, builtin: str, architecture: str,
                                                                    configs: str) -> None:
    bundle = load_model_bundle(builtin)
    single = save_single_file(bundle, tmp_path / f"{builtin}.safetensors")
    folder = save_diffusers(bundle, tmp_path / f"{builtin}-folder")
    for path in (single, folder):
        assert peek_model(str(path)).detection.architecture == architecture
        assert config_family_of(str(path)) == configs  # real-sized configs: the file's shapes are what it stands for


def test_another_kind_of_model_gets_the_loaders_refusal_and_the_estimate_falls_back(tmp_path: Path) -> None:
    inpaint = tmp_path / "inpaint.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 9, 3, 3),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(768)}, str(inpaint))
    with pytest.raises(ModelLoadError, match="inpainting"):
        peek_model(str(inpaint))
    assert config_family_of(str(inpaint)) == "sd15"


def test_a_damaged_pickle_is_refused_by_name_and_a_missing_path_is_unknown(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="model.ckpt"):
        peek_model(str(ckpt))
    assert peek_model(str(tmp_path / "nothing.safetensors")) is None
    assert config_family_of(str(ckpt), default="sd15") == "sd15"


def test_a_ckpt_is_read_for_its_shapes_without_running_code(tmp_path: Path) -> None:
    bundle = load_model_bundle("tiny-sd2")
    single = save_single_file(bundle, tmp_path / "sd2.safetensors")
    from safetensors.torch import load_file

    torch.save({"state_dict": load_file(str(single))}, tmp_path / "sd2.ckpt")
    assert peek_model(str(tmp_path / "sd2.ckpt")).detection.architecture == "sd2"
