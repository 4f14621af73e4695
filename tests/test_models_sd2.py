"""SD2.x: shipped configs (512-base ε, 768-v v), single-file and folder loading, key layout, round trips."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from library.errors import ModelLoadError
from library.models import load_model_bundle
from library.models.configs import load_family_configs
from library.models.ldm_layout import expected_ldm_shapes
from library.models.modules import build_component
from library.models.saving import ldm_state_dict, save_diffusers, save_single_file


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("family, prediction, size", [("sd2-768-v", "v_prediction", 96), ("sd2-512", "epsilon", 64)])
def test_sd2_configs_have_the_public_sizes(family, prediction, size):
    """stabilityai/stable-diffusion-2-1(-base): UNet 865,910,724 parameters (the published 865.9M),
    VAE 83,653,863 (the SD VAE, as SD1.5's), text encoder 340,387,840 = OpenCLIP ViT-H's text tower
    as diffusers keeps it: 23 of 24 layers x 12,596,224 + token embedding 49408x1024 + positions
    77x1024 + final norm 2x1024."""
    configs = load_family_configs(family)
    assert configs["scheduler"]["prediction_type"] == prediction
    assert configs["unet"]["sample_size"] == size
    unet = build_component("unet", configs["unet"], empty=True)
    te = build_component("text_encoder", configs["text_encoder"], empty=True)
    vae = build_component("vae", configs["vae"], empty=True)
    assert _count(unet) == 865_910_724
    layer = 4 * 1024 * 1024 + 4 * 1024 + 2 * 1024 * 4096 + 4096 + 1024 + 4 * 1024
    assert layer == 12_596_224
    assert _count(te) == 23 * layer + 49408 * 1024 + 77 * 1024 + 2 * 1024 == 340_387_840
    assert _count(vae) == 83_653_863
    assert unet.config.use_linear_projection and unet.config.cross_attention_dim == 1024
    assert list(unet.config.attention_head_dim) == [5, 10, 20, 20]
    assert te.config.hidden_act == "gelu" and te.config.num_hidden_layers == 23
    assert te.config.pad_token_id == 0  # OpenCLIP pads with "!" (id 0)


# ---- the single-file layout ---------------------------------------------------------------------

TE = "cond_stage_model.model."


def _prefix_counts(keys) -> dict[str, int]:
    """Keys per component prefix: the first two name parts (`model.diffusion_model`, `cond_stage_model.model`), the VAE's one."""
    return dict(Counter(k.split(".")[0] if k.startswith("first_stage_model.") else ".".join(k.split(".")[:2])
                        for k in keys))


def test_sd2_sized_model_converts_to_the_real_key_set():
    """v2-1_768-ema-pruned's model keys: UNet 686 (the SD1.x block numbering, as the LDM UNet is the same
    class), VAE 248, OpenCLIP ViT-H 294 = 24 resblocks x 12 + token_embedding, positional_embedding,
    ln_final.{weight,bias}, text_projection, logit_scale. Of those, diffusers drops exactly resblock 23
    and text_projection (its SD_2_TEXT_ENCODER_KEYS_TO_IGNORE) -- and logit_scale, which it never maps."""
    from diffusers.loaders.single_file_utils import SD_2_TEXT_ENCODER_KEYS_TO_IGNORE

    shapes = expected_ldm_shapes("sd2-768-v")
    assert _prefix_counts(shapes) == {"model.diffusion_model": 686, "first_stage_model": 248,
                                      "cond_stage_model.model": 294}
    assert len(shapes) == 1228
    assert set(expected_ldm_shapes("sd2-512")) == set(shapes)
    stand_ins = {k for k in shapes if ".resblocks.23." in k or k.endswith(("text_projection", "logit_scale"))}
    assert stand_ins - {TE + "logit_scale"} == set(SD_2_TEXT_ENCODER_KEYS_TO_IGNORE)
    assert shapes[TE + "transformer.resblocks.0.attn.in_proj_weight"] == (3072, 1024)
    assert shapes[TE + "positional_embedding"] == (77, 1024)
    assert shapes["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320)  # linear, not 1x1 conv
    assert shapes["model.diffusion_model.middle_block.1.proj_out.weight"] == (1280, 1280)
    assert shapes["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 1024)


def test_tiny_sd2_uses_the_real_naming():
    real, tiny = set(expected_ldm_shapes("sd2-768-v")), set(expected_ldm_shapes("tiny-sd2"))
    assert tiny <= real  # fewer layers and narrower, same names
    assert {TE + "transformer.resblocks.3.attn.in_proj_weight", TE + "text_projection", TE + "logit_scale"} <= tiny


@pytest.fixture(scope="module")
def tiny_sd2():
    return load_model_bundle("tiny-sd2")


@pytest.fixture(scope="module")
def sd2_file(tiny_sd2, tmp_path_factory) -> Path:
    return save_single_file(tiny_sd2, tmp_path_factory.mktemp("sd2") / "tiny-sd2.safetensors")


def _same_modules(a, b) -> None:
    for name, module in a.components().items():
        x, y = module.state_dict(), b.components()[name].state_dict()
        assert x.keys() == y.keys(), name
        assert all(torch.equal(x[k], y[k]) for k in x), name


def test_single_file_round_trip_is_exact(tiny_sd2, sd2_file, tmp_path):
    ldm = load_file(str(sd2_file))
    # the OpenCLIP layout: fused in_proj = q, k, v stacked; one resblock beyond the HF model's 3 (a copy
    # of the last, as sd-scripts writes it); text_projection and logit_scale stand-ins
    sd = tiny_sd2.text_encoder.state_dict()
    fused = ldm[TE + "transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(fused, torch.cat([sd[f"encoder.layers.1.self_attn.{x}_proj.weight"] for x in "qkv"]))
    assert torch.equal(ldm[TE + "transformer.resblocks.3.mlp.c_fc.weight"], ldm[TE + "transformer.resblocks.2.mlp.c_fc.weight"])
    loaded = load_model_bundle(str(sd2_file))
    _same_modules(tiny_sd2, loaded)
    assert (loaded.facts.architecture, loaded.facts.config_family) == ("sd2", "tiny-sd2")
    # a file whose extra layer is real (not a copy) comes back unchanged: file -> bundle -> file
    ldm[TE + "transformer.resblocks.3.mlp.c_fc.weight"] = torch.randn_like(ldm[TE + "transformer.resblocks.3.mlp.c_fc.weight"])
    ldm[TE + "logit_scale"] = torch.tensor(4.6052)
    path = tmp_path / "real-extra.safetensors"
    save_file(ldm, str(path))
    again = ldm_state_dict(load_model_bundle(str(path)))
    assert again.keys() == ldm.keys()
    assert all(torch.equal(again[k], ldm[k]) for k in ldm)


def test_prediction_type_from_marker_flags_or_assumed(sd2_file, tmp_path):
    marked = load_model_bundle(str(sd2_file))  # our v-prediction save carries ComfyUI's `v_pred` marker
    assert marked.facts.prediction_type == "v_prediction" and marked.facts.prediction_known
    assert "v_pred" in marked.facts.prediction_source
    plain = {k: v for k, v in load_file(str(sd2_file)).items() if k != "v_pred"}
    path = tmp_path / "plain.safetensors"
    save_file(plain, str(path))
    assumed = load_model_bundle(str(path))
    assert assumed.facts.prediction_type == "v_prediction" and not assumed.facts.prediction_known
    assert "--v2 without --v_parameterization" in assumed.facts.prediction_source
    eps = load_model_bundle(str(path), v2=True)  # sd-scripts: --v2 alone is the 512-base, epsilon
    assert eps.facts.prediction_type == "epsilon" and eps.scheduler_config["prediction_type"] == "epsilon"
    v = load_model_bundle(str(path), v2=True, v_parameterization=True)
    assert v.facts.prediction_type == "v_prediction" and v.facts.prediction_source.startswith("--v_parameterization")


def test_diffusers_single_file_loader_reads_our_file_identically(tiny_sd2, sd2_file, tmp_path):
    """diffusers' own from_single_file (offline: configs from a local folder via `config=`)."""
    from diffusers import StableDiffusionPipeline

    folder = save_diffusers(tiny_sd2, tmp_path / "configs")
    pipe = StableDiffusionPipeline.from_single_file(str(sd2_file), config=str(folder), local_files_only=True)
    for name, module in tiny_sd2.components().items():
        ours, theirs = module.state_dict(), getattr(pipe, name).state_dict()
        assert set(ours) == {k for k in theirs if not k.endswith("position_ids")}, name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_diffusers_folder_round_trip(tiny_sd2, tmp_path):
    folder = save_diffusers(tiny_sd2, tmp_path / "pipe")
    loaded = load_model_bundle(str(folder))
    _same_modules(tiny_sd2, loaded)
    assert loaded.facts.architecture == "sd2" and loaded.facts.prediction_type == "v_prediction"
    assert loaded.facts.prediction_known and loaded.facts.config_family == "tiny-sd2"
    assert loaded.tokenizer("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 0, 0]


def test_v2_flag_on_another_family_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=r"--v2 was given but tiny is a Stable Diffusion 1\.x model"):
        load_model_bundle("tiny", v2=True)
