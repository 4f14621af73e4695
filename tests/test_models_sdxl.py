"""SDXL base: the single-file layout (SGM UNet, CLIP ViT-L + OpenCLIP bigG), folders, round trips, refusals."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from library.errors import ModelLoadError
from library.models import load_model_bundle
from library.models.ldm_layout import expected_ldm_shapes
from library.models.saving import ldm_state_dict, save_diffusers, save_single_file

TE1 = "conditioner.embedders.0.transformer."
TE2 = "conditioner.embedders.1.model."
UNET = "model.diffusion_model."


def _prefix_counts(keys) -> dict[str, int]:
    def prefix(k: str) -> str:
        parts = k.split(".")
        return ".".join(parts[:3]) if k.startswith("conditioner.") else ".".join(parts[:2]) if k.startswith("model.") else parts[0]
    return dict(Counter(prefix(k) for k in keys))


def test_sdxl_sized_model_converts_to_the_real_key_set():
    """sd_xl_base_1.0.safetensors: 2,515 tensors = SGM UNet 1,680 (model.diffusion_model.*), VAE 248,
    CLIP ViT-L 197 (12 layers x 16 + embeddings 2 + final norm 2 + position_ids), OpenCLIP ViT-bigG 390
    (32 resblocks x 12 + token_embedding, positional_embedding, ln_final x2, text_projection, logit_scale)."""
    shapes = expected_ldm_shapes("sdxl")
    assert _prefix_counts(shapes) == {"model.diffusion_model": 1680, "first_stage_model": 248,
                                      "conditioner.embedders.0": 197, "conditioner.embedders.1": 390}
    assert 12 * 16 + 2 + 2 + 1 == 197 and 32 * 12 + 6 == 390
    assert len(shapes) == 2515
    assert shapes[UNET + "label_emb.0.0.weight"] == (1280, 2816)  # add_embedding: 1280 pooled + 6 ids x 256
    assert shapes[UNET + "label_emb.0.2.weight"] == (1280, 1280)
    assert shapes[UNET + "input_blocks.4.1.proj_in.weight"] == (640, 640)
    assert shapes[UNET + "input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight"] == (1280, 2048)  # depth 10
    assert UNET + "input_blocks.4.1.transformer_blocks.2.norm1.weight" not in shapes  # depth 2 at level 1
    assert shapes[UNET + "middle_block.1.transformer_blocks.9.ff.net.2.weight"] == (1280, 5120)
    assert shapes[UNET + "output_blocks.2.2.conv.weight"] == (1280, 1280, 3, 3)  # level 0's upsampler
    assert UNET + "input_blocks.1.1.proj_in.weight" not in shapes  # level 0 has no attention
    assert shapes[TE1 + "text_model.embeddings.position_ids"] == (1, 77)
    assert shapes[TE2 + "text_projection"] == (1280, 1280)
    assert shapes[TE2 + "transformer.resblocks.31.attn.in_proj_weight"] == (3840, 1280)
    assert shapes["first_stage_model.decoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)


def test_tiny_sdxl_uses_the_real_naming():
    real, tiny = set(expected_ldm_shapes("sdxl")), set(expected_ldm_shapes("tiny-sdxl"))
    assert tiny <= real  # same block layout and depths, narrower: a subset of the same names
    unet = {k for k in tiny if k.startswith(UNET)}
    assert unet == {k for k in real if k.startswith(UNET)} - {UNET + "input_blocks.7.0.skip_connection.weight",
                                                             UNET + "input_blocks.7.0.skip_connection.bias"}


@pytest.fixture(scope="module")
def tiny_sdxl():
    return load_model_bundle("tiny-sdxl")


@pytest.fixture(scope="module")
def sdxl_file(tiny_sdxl, tmp_path_factory) -> Path:
    return save_single_file(tiny_sdxl, tmp_path_factory.mktemp("sdxl") / "tiny-sdxl.safetensors")


def _same_modules(a, b) -> None:
    for name, module in a.components().items():
        x, y = module.state_dict(), b.components()[name].state_dict()
        assert x.keys() == y.keys(), name
        assert all(torch.equal(x[k], y[k]) for k in x), name


def test_single_file_round_trip_is_exact(tiny_sdxl, sdxl_file, tmp_path):
    ldm = load_file(str(sdxl_file))
    te2 = tiny_sdxl.text_encoder_2.state_dict()
    assert torch.equal(ldm[TE2 + "text_projection"], te2["text_projection.weight"].t())  # x @ P vs. Linear
    assert torch.equal(ldm[UNET + "label_emb.0.0.weight"], tiny_sdxl.unet.state_dict()["add_embedding.linear_1.weight"])
    loaded = load_model_bundle(str(sdxl_file))
    _same_modules(tiny_sdxl, loaded)
    assert (loaded.facts.architecture, loaded.facts.config_family, loaded.facts.family.name) == ("sdxl", "tiny-sdxl", "sdxl")
    assert loaded.tokenizer.pad_token_id == 49407 and loaded.tokenizer_2.pad_token_id == 0
    ldm[TE2 + "logit_scale"] = torch.tensor(4.6052)  # a real file's value comes back unchanged
    path = tmp_path / "again.safetensors"
    save_file(ldm, str(path))
    again = ldm_state_dict(load_model_bundle(str(path)))
    assert again.keys() == ldm.keys() and all(torch.equal(again[k], ldm[k]) for k in ldm)


def test_diffusers_single_file_loader_agrees(tiny_sdxl, sdxl_file, tmp_path):
    """diffusers' StableDiffusionXLPipeline.from_single_file, offline (`config=` a local folder):
    identical UNet, VAE and CLIP ViT-L. For the OpenCLIP encoder its loader cannot be used on a tiny
    model whose two encoders are equally wide (it tests CLIP-L's key and width first and loads CLIP-L's
    weights as text_encoder_2), so that one is checked against its `convert_open_clip_checkpoint`."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    folder = save_diffusers(tiny_sdxl, tmp_path / "configs")
    pipe = StableDiffusionXLPipeline.from_single_file(str(sdxl_file), config=str(folder), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(tiny_sdxl, name).state_dict(), getattr(pipe, name).state_dict()
        assert set(ours) == {k for k in theirs if not k.endswith("position_ids")}, name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    theirs = convert_open_clip_checkpoint(tiny_sdxl.text_encoder_2, load_file(str(sdxl_file)), prefix=TE2)
    ours = tiny_sdxl.text_encoder_2.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_diffusers_folder_round_trip(tiny_sdxl, tmp_path):
    folder = save_diffusers(tiny_sdxl, tmp_path / "pipe")
    assert (folder / "text_encoder_2" / "model.safetensors").is_file() and (folder / "tokenizer_2").is_dir()
    loaded = load_model_bundle(str(folder))
    _same_modules(tiny_sdxl, loaded)
    assert loaded.facts.architecture == "sdxl" and loaded.facts.config_family == "tiny-sdxl"
    assert loaded.tokenizer_2("a cat", padding="max_length", max_length=6).input_ids == [49406, 320, 2368, 49407, 0, 0]
    assert loaded.tokenizer("a cat", padding="max_length", max_length=6).input_ids[-1] == 49407


def test_v_pred_and_ztsnr_markers(sdxl_file, tmp_path):
    """ComfyUI's markers (NoobAI-XL v-pred and similar): an empty `v_pred` tensor, `ztsnr` for zero terminal SNR."""
    plain = load_model_bundle(str(sdxl_file))
    assert plain.facts.prediction_type == "epsilon" and not plain.facts.prediction_known
    assert "--v_parameterization" in plain.facts.prediction_source
    state = {**load_file(str(sdxl_file)), "v_pred": torch.zeros(0), "ztsnr": torch.zeros(0)}
    path = tmp_path / "vpred.safetensors"
    save_file(state, str(path))
    marked = load_model_bundle(str(path))
    assert marked.facts.prediction_type == "v_prediction" and marked.facts.prediction_known
    assert marked.scheduler_config["prediction_type"] == "v_prediction"
    assert any("zero terminal SNR" in n for n in marked.facts.notes)
    written = ldm_state_dict(marked)
    assert {"v_pred", "ztsnr"} <= set(written)  # kept, so other tools read it as v-prediction too


def _refused(tmp_path: Path, state: dict[str, torch.Tensor]) -> str:
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError) as err:
        load_model_bundle(str(path))
    return str(err.value)


@pytest.mark.parametrize("keys, what", [
    ({"conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight": (3840, 1280),
      UNET + "input_blocks.0.0.weight": (384, 4, 3, 3)}, "the SDXL refiner"),
    ({"model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,)},
     "a Stable Diffusion 3 / 3.5 model"),
    ({"double_blocks.0.img_attn.norm.key_norm.scale": (128,)}, "a FLUX model"),
    ({"clip_txt_mapper.weight": (2048, 1280)}, "a Stable Cascade"),
    ({UNET + "input_blocks.0.0.weight": (320, 9, 3, 3), "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)},
     "an inpainting model (9-channel UNet input)"),
    ({"something.else.weight": (4,)}, "no Stable Diffusion UNet"),
    ({UNET + "input_blocks.0.0.weight": (320, 4, 3, 3)}, "an unknown model"),
])
def test_other_models_are_refused_by_name(tmp_path, keys, what):
    message = _refused(tmp_path, {k: torch.zeros(shape) for k, shape in keys.items()})
    assert what in message
    assert "lorasmith loads Stable Diffusion 1.x, 2.x (512-base and 768-v) and SDXL base models" in message


def test_refiner_and_inpainting_folders_are_refused(tiny_sdxl, tmp_path):
    import json
    import shutil

    folder = save_diffusers(tiny_sdxl, tmp_path / "refiner")
    shutil.rmtree(folder / "text_encoder")
    with pytest.raises(ModelLoadError, match="the SDXL refiner"):
        load_model_bundle(str(folder))
    folder = save_diffusers(tiny_sdxl, tmp_path / "inpaint")
    config = folder / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "in_channels": 9}))
    with pytest.raises(ModelLoadError, match=r"an inpainting model \(9-channel UNet input\)"):
        load_model_bundle(str(folder))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ModelLoadError, match="a FLUX model"):
        load_model_bundle(str(folder))


def test_inspect_model_says_what_was_detected_and_why(sdxl_file, capsys):
    from library.cli import main

    assert main(["inspect-model", str(sdxl_file)]) == 0
    out = capsys.readouterr().out
    assert "architecture: Stable Diffusion XL [sdxl] (config: tiny-sdxl)" in out
    assert "detected by:  two text encoders: `conditioner.embedders.0.transformer.*` (CLIP ViT-L)" in out
    assert "detected by:  `label_emb` (size/crop conditioning) in the UNet" in out
    assert ("prediction:   epsilon -- cannot be known from the model; the Stable Diffusion XL default: the file "
            "does not say; pass --v_parameterization if this is a v-prediction fine-tune") in out
    assert main(["inspect-model", str(sdxl_file), "--v_parameterization"]) == 0
    assert "prediction:   v_prediction (from --v_parameterization)" in capsys.readouterr().out
    assert main(["inspect-model", str(sdxl_file), "--v2"]) == 2
    assert "--v2 was given but" in capsys.readouterr().err


@pytest.mark.parametrize("family, prediction, expected", [
    ("sdxl", "epsilon", "sdxl"), ("sd2-768-v", "v_prediction", "sd2-768-v"), ("sd2-768-v", "epsilon", "sd2-512"),
    ("sd15", "epsilon", "sd15"),
])
def test_real_sized_layouts_are_detected_and_matched(family, prediction, expected):
    """The real checkpoints' key sets (shapes only, no 7 GB file): detected family and shipped config.
    SD2.x 512-base and 768-v have identical shapes, so the prediction type picks the config."""
    from library.models.architecture import detect_ldm
    from library.models.configs import architecture_of_config
    from library.models.single_file import layout_problems, match_config_family

    shapes = dict(expected_ldm_shapes(family))
    detection = detect_ldm("real.safetensors", shapes)
    assert detection.architecture == architecture_of_config(family)
    assert match_config_family(Path("real.safetensors"), detection.architecture, shapes, prediction) == expected
    if family == "sd2-768-v":  # files without the 24th layer / text_projection / logit_scale still load
        pruned = {k: v for k, v in shapes.items() if ".resblocks.23." not in k and not k.endswith(("projection", "logit_scale"))}
        assert layout_problems("sd2", "sd2-768-v", pruned) == []
        del pruned["model.diffusion_model.out.2.weight"]
        assert layout_problems("sd2", "sd2-768-v", pruned) == ["missing model.diffusion_model.out.2.weight (unet)"]


def test_convert_cli_and_separate_vae(tiny_sdxl, sdxl_file, tmp_path, capsys):
    """`lorasmith convert` both ways in fp16, and an SDXL VAE file (LDM names without prefix) swapped in."""
    from library.cli import main
    from library.models.ldm_convert import component_to_ldm

    folder = tmp_path / "pipe"
    assert main(["convert", str(sdxl_file), str(folder), "--dtype", "fp16"]) == 0
    back = tmp_path / "back.safetensors"
    assert main(["convert", str(folder), str(back)]) == 0
    capsys.readouterr()
    half = load_file(str(back))
    assert half[UNET + "label_emb.0.0.weight"].dtype == torch.float16
    assert torch.equal(half[TE2 + "text_projection"], tiny_sdxl.text_encoder_2.state_dict()["text_projection.weight"].t().half())
    vae_state = {k.removeprefix("first_stage_model."): v + 1 for k, v in
                 component_to_ldm("vae", tiny_sdxl.vae.config, tiny_sdxl.vae.state_dict()).items()}
    vae_path = tmp_path / "sdxl_vae.safetensors"
    save_file(vae_state, str(vae_path))
    swapped = load_model_bundle(str(sdxl_file), vae=str(vae_path))
    assert torch.equal(swapped.vae.state_dict()["decoder.conv_out.bias"], tiny_sdxl.vae.state_dict()["decoder.conv_out.bias"] + 1)
    assert swapped.vae.config.scaling_factor == 0.13025  # the SDXL VAE's, from the model's own config family
    counts = swapped.facts.parameter_counts
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total") and "text_encoder_2" in counts
