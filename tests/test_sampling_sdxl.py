"""SDXL in the bundled sampler, on the built-in tiny-sdxl.

The reference is diffusers' StableDiffusionXLPipeline built from the same tiny modules, with
the same starting noise and an Euler scheduler on the same sigmas ("linspace" spacing at 10
steps gives integer timesteps 999, 888, ..., 0, which is A1111's uniform schedule). Emphasis
and BREAK have no diffusers counterpart and are checked against hand-built expectations.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from library.models import load_model_bundle
from library.sampling.conditioning import apply_emphasis
from library.sampling.pipeline import SampleRequest, SamplingSession, generate
from library.sampling.sdxl_conditioning import SDXLCond, pad_after_end, sdxl_time_ids

STEPS = 10
SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bundle():
    return load_model_bundle("tiny-sdxl")


def diffusers_pipe(bundle) -> StableDiffusionXLPipeline:
    scheduler = EulerDiscreteScheduler.from_config(bundle.scheduler_config, timestep_spacing="linspace")
    return StableDiffusionXLPipeline(
        vae=bundle.vae, text_encoder=bundle.text_encoder, text_encoder_2=bundle.text_encoder_2,
        tokenizer=bundle.tokenizer, tokenizer_2=bundle.tokenizer_2, unet=bundle.unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=True)


def seed_noise(seed: int) -> torch.Tensor:
    """The noise our sampler draws for one image of this seed (pipeline.sample_latents)."""
    return torch.randn((4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(seed)).unsqueeze(0)


@pytest.mark.parametrize("negative", ["blurry, ugly", ""])
def test_txt2img_matches_diffusers_sdxl_pipeline(bundle, negative):
    request = SampleRequest(prompt="a photo of a cat", negative_prompt=negative, steps=STEPS, cfg_scale=5.0,
                            sampler="Euler", width=SIZE, height=SIZE, seed=3)
    ours = np.asarray(generate(bundle, request)[0].image, dtype=np.float32)
    with torch.no_grad():
        ref = diffusers_pipe(bundle)(
            prompt="a photo of a cat", negative_prompt=negative or None, num_inference_steps=STEPS,
            guidance_scale=5.0, height=SIZE, width=SIZE, latents=seed_noise(3), output_type="np").images[0]
    diff = np.abs(ours - ref * 255.0)
    assert diff.max() <= 1.0, diff.max()  # uint8 rounding only
    assert ref.std() > 0.01  # the image is not flat, so equality means something


def test_latents_match_diffusers_and_cfg_rescale(bundle):
    """Before the VAE, with CFG rescale: diffusers' guidance_rescale and ours agree on the latents."""
    request = SampleRequest(prompt="a red (car:1.0) on a road", negative_prompt="lowres", steps=STEPS,
                            cfg_scale=7.0, guidance_rescale=0.7, sampler="Euler", width=SIZE, height=SIZE, seed=5)
    session = SamplingSession(bundle)
    from library.sampling.pipeline import sample_latents

    cond, uncond = session.encoder.encode_batch([request.prompt], [request.negative_prompt], None)
    ours = sample_latents(session.denoiser, request, [5], cond, uncond)
    with torch.no_grad():
        ref = diffusers_pipe(bundle)(
            prompt="a red car on a road", negative_prompt="lowres", num_inference_steps=STEPS, guidance_scale=7.0,
            guidance_rescale=0.7, height=SIZE, width=SIZE, latents=seed_noise(5), output_type="latent").images
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-4), float((ours - ref).abs().max())


def test_conditioning_matches_diffusers_encode_prompt(bundle):
    session = SamplingSession(bundle)
    cond, uncond = session.encoder.encode_batch(["a dog, running"], [""], None)
    pe, npe, pooled, npooled = diffusers_pipe(bundle).encode_prompt(
        "a dog, running", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    assert torch.allclose(cond.hidden, pe, atol=1e-5)
    assert torch.allclose(cond.pooled, pooled, atol=1e-5)
    assert torch.count_nonzero(uncond.hidden) == 0 and torch.count_nonzero(uncond.pooled) == 0
    assert torch.equal(npe, uncond.hidden) and torch.equal(npooled, uncond.pooled)
    # te1 (32 wide) then te2 (32 wide): the UNet's cross-attention width 64
    assert cond.hidden.shape == (1, 77, 64) and cond.pooled.shape == (1, 32)


def hand_states(encoder, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    out = encoder(torch.tensor([tokens]), output_hidden_states=True, return_dict=True)
    return out.hidden_states[-2][0], getattr(out, "text_embeds", None)


def test_emphasis_and_break_on_both_encoders_by_hand(bundle):
    """'(cat:1.5) BREAK dog': two chunks; each encoder's states weighted and mean-restored on its own."""
    tok, tok2 = bundle.tokenizer, bundle.tokenizer_2
    bos, eos = tok.bos_token_id, tok.eos_token_id
    cat, dog = tok("cat", add_special_tokens=False).input_ids, tok("dog", add_special_tokens=False).input_ids
    chunk1 = [bos] + cat + [eos] * (76 - len(cat))
    chunk2 = [bos] + dog + [eos] * (76 - len(dog))
    weights1 = torch.ones(77)
    weights1[1:1 + len(cat)] = 1.5
    with torch.no_grad():
        expected_parts, pooled = [], None
        for encoder, pad in ((bundle.text_encoder, eos), (bundle.text_encoder_2, tok2.pad_token_id)):
            z1, p1 = hand_states(encoder, pad_after_end(chunk1, eos, pad))
            z2, _ = hand_states(encoder, pad_after_end(chunk2, eos, pad))
            mean = z1.mean()
            z1w = z1 * weights1[:, None]
            z1w = z1w * (mean / z1w.mean())
            expected_parts.append(torch.cat([z1w, z2]))
            pooled = p1 if p1 is not None else pooled
        expected = torch.cat(expected_parts, dim=-1).unsqueeze(0)
        got = SamplingSession(bundle).encoder.encode("(cat:1.5) BREAK dog")
    assert tok2.pad_token_id == 0 and pad_after_end(chunk1, eos, 0)[len(cat) + 2] == 0
    assert got.hidden.shape == (1, 154, 64)
    assert torch.allclose(got.hidden, expected, atol=1e-5)
    assert torch.allclose(got.pooled, pooled.unsqueeze(0), atol=1e-5)  # first chunk, unweighted
    # emphasis on the concatenation instead would differ: the two encoders keep their own means
    joint = apply_emphasis(torch.cat([hand_states(bundle.text_encoder, chunk1)[0],
                                      hand_states(bundle.text_encoder_2, pad_after_end(chunk1, eos, 0))[0]], -1),
                           weights1)
    assert not torch.allclose(got.hidden[0, :77], joint, atol=1e-4)


def test_pad_after_end_by_hand():
    assert pad_after_end([9, 5, 7, 7, 7], 7, 0) == [9, 5, 7, 0, 0]
    assert pad_after_end([9, 5, 7, 7], 7, 7) == [9, 5, 7, 7]


def test_time_ids_are_height_width_crop_target():
    ids = sdxl_time_ids(768, 1024, 2)
    assert ids.tolist() == [[768, 1024, 0, 0, 768, 1024]] * 2


def test_time_ids_follow_the_latent_size(bundle):
    """A non-square request passes (h, w, 0, 0, h, w) to the UNet's add_time_ids."""
    seen = []
    hook = bundle.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone()), with_kwargs=True)
    try:
        generate(bundle, SampleRequest(prompt="x", steps=1, width=48, height=32, seed=1, sampler="Euler"))
    finally:
        hook.remove()
    assert seen and seen[0].tolist() == [[32, 48, 0, 0, 32, 48]] * 2  # uncond and cond halves


def test_cond_cat_and_shape():
    a = SDXLCond(torch.zeros(1, 77, 8), torch.zeros(1, 4))
    b = SDXLCond(torch.ones(1, 77, 8), torch.ones(1, 4))
    both = SDXLCond.cat([a, b])
    assert both.shape == (2, 77, 8) and both.pooled[1].sum() == 4


def test_fp16_vae_nan_is_decoded_again_in_fp32(bundle, caplog):
    """A NaN from the fp16 VAE (forced at its last conv) → the batch is decoded in fp32, logged, VAE back to fp16."""
    import copy
    import logging

    from library.sampling.pipeline import decode_latents

    vae = copy.deepcopy(bundle.vae)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = np.asarray(decode_latents(vae, latents)[0])  # fp32 reference
    vae.half()
    vae.decoder.conv_out.register_forward_hook(
        lambda m, args, out: out * float("nan") if out.dtype == torch.float16 else out)
    with caplog.at_level(logging.WARNING, logger="library.sampling.vae_decode"):
        image = np.asarray(decode_latents(vae, latents)[0])
    assert "NaN" in caplog.text and "fp32" in caplog.text and "--no_half_vae" in caplog.text
    assert next(vae.parameters()).dtype == torch.float16
    # fp16 weights rounded, then decoded in fp32: within a few levels of the fp32 VAE's image
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 3
    assert expected.std() > 1


def test_finite_fp16_decode_is_not_retried(bundle, caplog):
    import copy
    import logging

    from library.sampling.vae_decode import decode_to_pixels

    vae = copy.deepcopy(bundle.vae).half()
    with caplog.at_level(logging.WARNING, logger="library.sampling.vae_decode"):
        pixels, retried = decode_to_pixels(vae, torch.zeros(1, 4, 8, 8))
    assert not retried and torch.isfinite(pixels).all() and caplog.text == ""


def test_unet_lora_tag_applies_and_is_removed_on_sdxl(bundle, tmp_path):
    """<lora:NAME:1> with a UNet-only LoRA (saved by our own network, whatever its key naming) on SDXL."""
    from library.lora.network import LoRANetwork

    net = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=4, train_text_encoder=False)
    gen = torch.Generator().manual_seed(0)
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=gen) * 0.3
    net.save_weights(tmp_path / "x.safetensors")
    net.restore()
    request = SampleRequest(prompt="a cat", steps=2, width=32, height=32, seed=1, sampler="Euler",
                            lora_dir=str(tmp_path))
    before = np.asarray(generate(bundle, request)[0].image, dtype=int)
    with_lora = generate(bundle, SampleRequest(**{**request.__dict__, "prompt": "a cat <lora:x:1>"}))[0]
    after = np.asarray(generate(bundle, request)[0].image, dtype=int)
    assert np.abs(np.asarray(with_lora.image, dtype=int) - before).max() > 5
    assert np.array_equal(before, after)  # removed again
    assert 'Lora hashes: "x: ' in with_lora.parameters


@pytest.mark.parametrize("family", ["sdxl", "tiny-sdxl"])
def test_conditioning_layout_fits_the_unet(family):
    """te1 ⊕ te2 states fill cross-attention; te2's projection + 6 size ids × time dim fill the add-embedding.

    Real SDXL base (shipped config): 768 + 1280 = 2048 and 1280 + 6 × 256 = 2816.
    """
    from library.models.configs import load_family_configs

    c = load_family_configs(family)
    unet = c["unet"]
    assert c["text_encoder"]["hidden_size"] + c["text_encoder_2"]["hidden_size"] == unet["cross_attention_dim"]
    assert (c["text_encoder_2"]["projection_dim"] + sdxl_time_ids(1024, 1024, 1).shape[1]
            * unet["addition_time_embed_dim"]) == unet["projection_class_embeddings_input_dim"]
    if family == "sdxl":
        assert (unet["cross_attention_dim"], unet["projection_class_embeddings_input_dim"]) == (2048, 2816)


def test_sdxl_textual_inversion_uses_clip_l_and_clip_g_vectors(bundle, tmp_path):
    """An SDXL embedding whose clip_l / clip_g vectors are each encoder's own "cat" token: "a myemb" == "a cat".

    Both tiny encoders are 32 wide, so only the file's keys tell which vectors go where; swapped, it differs.
    """
    from safetensors.torch import save_file

    from library.sampling.embeddings import (
        token_embedding_module,
    )

    cat = bundle.tokenizer("cat", add_special_tokens=False).input_ids
    assert len(cat) == 1
    vec_l = token_embedding_module(bundle.text_encoder).weight[cat].detach().clone()
    vec_g = token_embedding_module(bundle.text_encoder_2).weight[cat].detach().clone()
    (tmp_path / "ok").mkdir()
    (tmp_path / "swapped").mkdir()
    save_file({"clip_l": vec_l, "clip_g": vec_g}, tmp_path / "ok" / "myemb.safetensors")
    save_file({"clip_l": vec_g, "clip_g": vec_l}, tmp_path / "swapped" / "myemb.safetensors")
    session = SamplingSession(bundle)
    reference = session.encoder.encode("a (cat:1.2)")
    session._use_embeddings(str(tmp_path / "ok"))
    got = session.encoder.encode("a (myemb:1.2)")
    assert torch.allclose(got.hidden, reference.hidden, atol=1e-5) and torch.allclose(got.pooled, reference.pooled,
                                                                                      atol=1e-5)
    session._use_embeddings(str(tmp_path / "swapped"))
    assert not torch.allclose(session.encoder.encode("a (myemb:1.2)").hidden, reference.hidden, atol=1e-3)
    image = SamplingSession(bundle).generate(SampleRequest(prompt="a myemb", steps=1, width=32, height=32, seed=1,
                                                           sampler="Euler", embeddings_dir=str(tmp_path / "ok")))[0]
    assert 'TI hashes: "myemb: ' in image.parameters
