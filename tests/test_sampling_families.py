"""img2img, hires fix, grids, training-time samples, regularization images and infotext on tiny-sdxl and tiny-sd2.

SD1 (`tiny`) has these tests already (test_sampling_pipeline, test_grid, test_regularization_generate);
here the same paths run on the two other families' built-in tiny models.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from library.models import load_model_bundle
from library.sampling.infotext import parse_infotext
from library.sampling.pipeline import (
    SampleRequest,
    SamplingSession,
    generate,
    plan_jobs,
)

FAMILIES = ["tiny-sdxl", "tiny-sd2"]
INIT = Image.new("RGB", (64, 64), (220, 40, 40))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=FAMILIES)
def bundle(request):
    return load_model_bundle(request.param)


def pixels(generated) -> np.ndarray:
    return np.asarray(generated.image, dtype=np.int16)


def test_batch_images_equal_images_made_alone(bundle):
    """A batch of two gives each image as it is alone.

    In float64: the random tiny-sd2 UNet amplifies float32 rounding (batch-size dependent kernels)
    to ~100 levels in 3 steps; in float64 the images are equal (measured: max difference 0).
    """
    from library.models.builtin import BUILTIN_MODELS

    bundle = BUILTIN_MODELS[bundle.facts.name](torch.float64)
    request = SampleRequest(prompt="a cat {red|blue}", negative_prompt="", steps=3, width=32, height=32, seed=7,
                            batch_size=2, sampler="Euler")
    batch = SamplingSession(bundle).generate(request)
    for i, image in enumerate(batch):
        alone = generate(bundle, dataclasses.replace(request, seed=7 + i, batch_size=1))[0]
        assert image.seed == alone.seed and np.abs(pixels(image) - pixels(alone)).max() <= 1


def test_img2img(bundle):
    request = SampleRequest(prompt="a red square", steps=4, width=64, height=64, seed=3, denoising_strength=0.5,
                            sampler="Euler")
    session = SamplingSession(bundle)
    out = session.run_jobs(request, plan_jobs(request)[1], init_images=[INIT])[0]
    txt2img = session.generate(request)[0]
    assert out.image.size == (64, 64)
    assert np.abs(pixels(out) - pixels(txt2img)).max() > 1
    assert "Denoising strength: 0.5," in out.parameters
    stronger = session.run_jobs(dataclasses.replace(request, denoising_strength=0.9), plan_jobs(request)[1],
                                init_images=[INIT])[0]
    assert np.abs(pixels(stronger) - pixels(out)).max() > 1


def test_hires_fix_doubles_the_size(bundle):
    calls = []
    hook = bundle.unet.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((args[0].shape[-2:], kwargs.get("added_cond_kwargs"))), with_kwargs=True)
    try:
        out = generate(bundle, SampleRequest(prompt="a house", steps=2, width=32, height=32, seed=1, sampler="Euler",
                                             enable_hr=True, hr_scale=2.0, denoising_strength=0.5))[0]
    finally:
        hook.remove()
    assert out.image.size == (64, 64) and "Hires upscale: 2," in out.parameters
    assert calls[0][0] == (4, 4) and calls[-1][0] == (8, 8)
    if bundle.text_encoder_2 is not None:  # SDXL: the second pass is conditioned on its own size
        assert calls[0][1]["time_ids"][0].tolist() == [32, 32, 0, 0, 32, 32]
        assert calls[-1][1]["time_ids"][0].tolist() == [64, 64, 0, 0, 64, 64]


def test_grid_with_seed_and_cfg_axes(bundle, tmp_path):
    from library.evaluation.grid import CellSettings, parse_axes, run_grid

    name = bundle.facts.name
    base = CellSettings(SampleRequest(prompt="a cube", steps=2, width=32, height=32, seed=2, sampler="Euler"), name)
    axes = parse_axes(base, [("Seed", "1, 2"), ("CFG Scale", "3, 7"), (None, None)], None)
    result = run_grid(base, axes, tmp_path, load_bundle=lambda n: bundle, progress=False, max_batch=1)
    assert len(result.cell_paths) == 4 and result.grid_path.is_file()
    params = parse_infotext(result.images[(1, 1, 0)].parameters)[2]
    assert (params["Seed"], params["CFG scale"], params["Model"]) == ("2", "7", name)
    alone = generate(bundle, dataclasses.replace(base.request, seed=2, cfg_scale=7.0))[0]
    assert np.abs(pixels(alone) - np.asarray(result.images[(1, 1, 0)].image, dtype=np.int16)).max() <= 1


def test_training_sample(bundle):
    from library.sampling.training_samples import sample_for_training

    for module in (bundle.unet, *bundle.text_encoders()):
        module.train()
    try:
        image = sample_for_training(bundle, None, "a dog --n blurry --w 48 --h 32 --s 2 --d 9 --l 5", sampler="euler")
        assert all(m.training for m in (bundle.unet, *bundle.text_encoders()))  # modes restored
    finally:
        for module in (bundle.unet, *bundle.text_encoders()):
            module.eval()
    assert image.image.size == (48, 32)
    params = parse_infotext(image.parameters)[2]
    assert (params["Seed"], params["Size"], params["Steps"], params["Model"]) == ("9", "48x32", "2", bundle.facts.name)
    same = generate(bundle, SampleRequest(prompt="a dog", negative_prompt="blurry", width=48, height=32, steps=2,
                                          seed=9, cfg_scale=5.0, sampler="Euler"))[0]
    assert np.abs(pixels(same) - pixels(image)).max() <= 1


def test_regularization_generate_cli(bundle, tmp_path, capsys):
    from library.cli import main

    name = bundle.facts.name
    argv = ["reg", "generate", str(tmp_path), "--class_prompt", "woman", "--prompt", "photo of a woman",
            "--count", "2", "--batch_size", "2", "--pretrained_model_name_or_path", name, "--resolution", "32",
            "--steps", "1", "--seed", "5", "--no_progress"]
    assert main(argv) == 0
    assert "0 already there, 2 generated, 2 of 2" in capsys.readouterr().out
    params = parse_infotext(Image.open(tmp_path / "1_woman" / "00001.png").text["parameters"])[2]
    assert (params["Seed"], params["Size"], params["Model"]) == ("6", "32x32", name)
    assert params["Model hash"] == bundle.facts.model_hash[:10]


def test_infotext_fields_per_family(bundle):
    """A1111 fields: Model/Model hash for every family; Clip skip not for SDXL (it ignores it); zsnr named."""
    request = SampleRequest(prompt="x", steps=1, width=32, height=32, seed=1, clip_skip=2, sampler="Euler")
    params = parse_infotext(generate(bundle, request)[0].parameters)[2]
    assert params["Model"] == bundle.facts.name and params["Size"] == "32x32"
    assert ("Clip skip" in params) == (bundle.text_encoder_2 is None)
    assert "Noise Schedule" not in params
    zsnr = dataclasses.replace(bundle, scheduler_config={**bundle.scheduler_config, "rescale_betas_zero_snr": True})
    params = parse_infotext(generate(zsnr, request)[0].parameters)[2]
    assert params["Noise Schedule"] == "Zero Terminal SNR"
