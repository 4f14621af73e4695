"""tiny-world pretraining pieces: latent folding, LR schedule, determinism, the weights file format."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from library.models.modules import expected_shapes
from library.world.generator import generate_world
from library.world.model import build_tiny_world_bundle, weights_path
from library.world.pretrain import Recipe, build_modules, pretrain, save_weights
from library.world.recipe import (SD_SCALING_FACTOR, encode_posteriors, fold_latent_normalisation,
                                  saturation_weights, warmup_cosine)

TINY_RECIPE = Recipe(seed=3, world_images=48, vae_steps=2, vae_full_steps=1, vae_batch=4,
                     unet_steps=2, unet_batch=4, ema_decay=0.9)


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(generate_world(32, seed=2).images)


def test_folding_latent_statistics_changes_latents_but_not_images(images):
    vae = build_modules(0)["vae"].eval()
    mean, std = encode_posteriors(vae, images, batch_size=16)
    z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = vae.decode(z).sample
    stats = fold_latent_normalisation(vae, mean, std)
    gain = torch.tensor(stats["channel_gain"])[None, :, None, None]
    shift = torch.tensor(stats["channel_mean"])[None, :, None, None]
    mean2, std2 = encode_posteriors(vae, images, batch_size=16)
    torch.testing.assert_close(mean2, (mean - shift) * gain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(std2, std * gain, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        after = vae.decode((z - shift) * gain).sample
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    # Scaled by SD's 0.18215, every channel's sampled latents now have mean 0 and std 1.
    var = mean2.var(dim=(0, 2, 3)) + std2.pow(2).mean(dim=(0, 2, 3))
    torch.testing.assert_close(var.sqrt() * SD_SCALING_FACTOR, torch.ones(4), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mean2.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)


def test_warmup_cosine_rises_linearly_then_decays_to_floor():
    assert warmup_cosine(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_saturation_weights_favour_coloured_pixels_over_gray_ones():
    x = torch.tensor([[-1.0, 1.0, 0.2], [-1.0, -1.0, 0.2], [-1.0, -1.0, 0.2]])[None, :, None, :]  # RGB columns
    w = saturation_weights(x, 10.0)[0, 0, 0]  # black, pure red, gray
    torch.testing.assert_close(w, torch.tensor([1.0, 11.0, 1.0]))


@pytest.fixture(scope="module")
def tiny_run():
    torch.set_num_threads(1)
    return pretrain(TINY_RECIPE, log=lambda _msg: None)


def test_pretraining_is_deterministic_on_cpu(tiny_run):
    state, facts = tiny_run
    again, _ = pretrain(TINY_RECIPE, log=lambda _msg: None)
    assert state.keys() == again.keys()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert facts["diffusion"]["steps"] == 2 and facts["vae"]["steps"] == 2


def test_weights_file_has_component_prefixed_fp16_keys_and_loads_as_bundle(tiny_run, tmp_path):
    state, facts = tiny_run
    path = save_weights(state, tmp_path, TINY_RECIPE, facts, ["python", "-m", "library.world.pretrain"])
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        assert all(f.get_tensor(k).dtype == torch.float16 for k in keys)
        assert f.metadata()["lorasmith.model"] == "tiny-world"
    for component in ("unet", "vae", "text_encoder"):
        names = {k.partition(".")[2] for k in keys if k.startswith(component + ".")}
        assert names == set(expected_shapes("tiny", component))
    provenance = json.loads((tmp_path / "tiny_world.json").read_text())
    assert provenance["recipe"]["seed"] == 3 and provenance["weights_bytes"] == path.stat().st_size
    bundle = build_tiny_world_bundle(torch.float32, path=path)
    w = bundle.unet.conv_in.weight
    assert w.dtype == torch.float32 and not w.requires_grad
    torch.testing.assert_close(w, state["unet.conv_in.weight"].half().float())
    assert bundle.facts.name == "tiny-world" and bundle.facts.stored_dtype == "fp16"


def test_shipped_weights_load_into_the_tiny_architecture():
    path = weights_path()
    if not path.is_file():
        pytest.fail(f"shipped tiny-world weights missing at {path}; rebuild with python -m library.world.pretrain")
    bundle = build_tiny_world_bundle(torch.float32)
    assert bundle.facts.parameter_counts["total"] == 4_414_987
    assert bundle.vae.config.scaling_factor == SD_SCALING_FACTOR
    provenance = json.loads(path.with_suffix(".json").read_text())
    assert provenance["weights_bytes"] == path.stat().st_size
    assert provenance["world"]["held_back_shape"] == "star"


def test_latent_offset_shifts_each_channel_of_the_decoder_input_by_a_constant(images):
    from library.world.recipe import train_vae

    def decoder_inputs(offset: float) -> torch.Tensor:
        vae = build_modules(0)["vae"]
        seen = []
        vae.post_quant_conv.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
        train_vae(vae, images, steps=1, batch_size=4, lr=0.0, kl_weight=0.0, generator=torch.Generator().manual_seed(1),
                  full_steps=1, latent_offset=offset, log=lambda _msg: None)
        return seen[0]

    plain, shifted = decoder_inputs(0.0), decoder_inputs(0.5)
    diff = shifted - plain  # same weights and generator: only the offset differs
    per_channel = diff.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(diff, per_channel.expand_as(diff), atol=1e-5, rtol=0)
    assert per_channel.abs().min() > 0 and per_channel.std() > 0.05 * plain.std()
