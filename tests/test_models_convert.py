"""LDM <-> diffusers conversion: round trips, reference converter, SD1.5 key set."""
from __future__ import annotations

import pytest
import torch
from diffusers.loaders import single_file_utils as reference

from library.models import build_tiny_bundle, load_model_bundle
from library.models.configs import load_family_configs
from library.models.ldm_convert import ldm_to_component, modules_to_ldm
from library.models.modules import build_component
from library.models.saving import ldm_state_dict, save_single_file

COMPONENTS = ("unet", "vae", "text_encoder")
PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
            "text_encoder": "cond_stage_model.transformer."}


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_bundle()


def _equal_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_to_ldm_and_back_in_memory_is_identical(tiny):
    ldm = modules_to_ldm(tiny.components())
    for component in COMPONENTS:
        back = ldm_to_component("mem", "tiny", component, ldm)
        original = tiny.components()[component].state_dict()
        assert back.keys() == original.keys()
        assert all(torch.equal(back[k], original[k]) for k in original)


def test_old_clip_key_names_load(tiny, tmp_path):
    """Files from older transformers name CLIP weights `cond_stage_model.transformer.encoder...`."""
    from safetensors.torch import save_file
    old = {k.replace("transformer.text_model.", "transformer."): v for k, v in ldm_state_dict(tiny).items()}
    save_file(old, str(tmp_path / "old.safetensors"))
    loaded = load_model_bundle(str(tmp_path / "old.safetensors"))
    assert _equal_state(loaded.text_encoder, tiny.text_encoder)


def test_tiny_single_file_round_trip_is_bit_identical(tiny, tmp_path):
    path = save_single_file(tiny, tmp_path / "tiny.safetensors")
    loaded = load_model_bundle(str(path))
    for component in COMPONENTS:
        assert _equal_state(tiny.components()[component], loaded.components()[component]), component
    assert loaded.facts.config_family == "tiny"
    ids = tiny.tokenizer(["a photo of a cat"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():  # modules assigned into meta skeletons must compute exactly like the originals
        assert torch.equal(loaded.text_encoder(ids).last_hidden_state, tiny.text_encoder(ids).last_hidden_state)
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        hidden = tiny.text_encoder(ids).last_hidden_state
        assert torch.equal(loaded.unet(latents, 500, hidden).sample, tiny.unet(latents, 500, hidden).sample)
        assert torch.equal(loaded.vae.decode(latents).sample, tiny.vae.decode(latents).sample)
    assert loaded.facts.source_format == "single_file" and loaded.facts.name == "tiny.safetensors"


def test_our_ldm_names_agree_with_diffusers_reference_converter(tiny):
    """diffusers' own (independent) LDM->diffusers converter must invert our diffusers->LDM map, value for value."""
    ldm = ldm_state_dict(tiny)
    configs = load_family_configs("tiny")
    unet = reference.convert_ldm_unet_checkpoint(dict(ldm), configs["unet"])
    vae = reference.convert_ldm_vae_checkpoint(dict(ldm), configs["vae"])
    clip = reference.convert_ldm_clip_checkpoint(dict(ldm))
    clip = {k.removeprefix("text_model."): v for k, v in clip.items() if not k.endswith("position_ids")}
    for converted, module in [(unet, tiny.unet), (vae, tiny.vae), (clip, tiny.text_encoder)]:
        original = module.state_dict()
        assert converted.keys() == original.keys()
        assert all(torch.equal(converted[k], original[k]) for k in original)


@pytest.fixture(scope="module")
def sd15_ldm_shapes() -> dict[str, tuple[int, ...]]:
    """An SD1.5-sized model from the shipped configs, on the meta device (no memory), as LDM names."""
    configs = load_family_configs("sd15")
    modules = {c: build_component(c, configs[c], empty=True) for c in COMPONENTS}
    return {k: tuple(v.shape) for k, v in modules_to_ldm(modules).items()}


def test_sd15_ldm_key_counts_per_prefix(sd15_ldm_shapes):
    # Tensors in a pruned SD1.5 checkpoint (v1-5-pruned-emaonly), derived from the architecture:
    # UNet 686, VAE 248, CLIP ViT-L/14 text model 196 weights (12 layers x 16 + 2 embeddings + 2 final
    # norm) plus the `position_ids` buffer the original CompVis/RunwayML files also store (public bug
    # reports quote "Unexpected key ... cond_stage_model.transformer.text_model.embeddings.position_ids"
    # when newer transformers load sd-v1-4.ckpt), so 197 tensors under that prefix, 1131 in all.
    counts = {c: sum(k.startswith(p) for k in sd15_ldm_shapes) for c, p in PREFIXES.items()}
    assert counts == {"unet": 686, "vae": 248, "text_encoder": 197}
    position_ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    assert sd15_ldm_shapes[position_ids] == (1, 77)
    assert len(sd15_ldm_shapes) == 1131


def test_sd15_parameter_counts(sd15_ldm_shapes):
    # Public SD1.5 sizes: UNet 859.52 M, VAE 83.65 M, CLIP ViT-L/14 text encoder 123.06 M parameters.
    weights = {k: s for k, s in sd15_ldm_shapes.items() if not k.endswith("position_ids")}
    totals = {c: sum(torch.Size(s).numel() for k, s in weights.items() if k.startswith(p))
              for c, p in PREFIXES.items()}
    assert totals == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


@pytest.mark.parametrize("key, shape", [
    ("model.diffusion_model.input_blocks.0.0.weight", (320, 4, 3, 3)),
    ("model.diffusion_model.time_embed.0.weight", (1280, 320)),
    ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", (320, 768)),
    ("model.diffusion_model.input_blocks.4.0.skip_connection.weight", (640, 320, 1, 1)),
    ("model.diffusion_model.input_blocks.9.0.op.weight", (1280, 1280, 3, 3)),
    ("model.diffusion_model.middle_block.1.proj_in.weight", (1280, 1280, 1, 1)),
    ("model.diffusion_model.output_blocks.2.1.conv.weight", (1280, 1280, 3, 3)),
    ("model.diffusion_model.output_blocks.5.2.conv.weight", (1280, 1280, 3, 3)),
    ("model.diffusion_model.output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight", (2560, 320)),
    ("model.diffusion_model.out.2.weight", (4, 320, 3, 3)),
    ("first_stage_model.encoder.mid.attn_1.q.weight", (512, 512, 1, 1)),
    ("first_stage_model.decoder.up.0.block.0.nin_shortcut.weight", (128, 256, 1, 1)),
    ("first_stage_model.decoder.up.3.upsample.conv.weight", (512, 512, 3, 3)),
    ("first_stage_model.quant_conv.weight", (8, 8, 1, 1)),
    ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", (49408, 768)),
    ("cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc1.weight", (3072, 768)),
    ("cond_stage_model.transformer.text_model.final_layer_norm.bias", (768,)),
])
def test_sd15_known_ldm_shapes(sd15_ldm_shapes, key, shape):
    assert sd15_ldm_shapes[key] == shape


def test_sd15_key_set_is_what_diffusers_reference_expects(sd15_ldm_shapes):
    """diffusers' converter maps our SD1.5 LDM key set onto exactly the diffusers module keys and shapes."""
    ldm = {k: torch.empty(s, device="meta") for k, s in sd15_ldm_shapes.items() if not k.endswith("position_ids")}
    configs = load_family_configs("sd15")
    for component, convert in [("unet", lambda: reference.convert_ldm_unet_checkpoint(dict(ldm), configs["unet"])),
                               ("vae", lambda: reference.convert_ldm_vae_checkpoint(dict(ldm), configs["vae"]))]:
        module = build_component(component, configs[component], empty=True)
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in convert().items()} == expected
