"""txt2img on the tiny model: determinism, seeds, LoRAs, parameters, training samples."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from library.errors import SamplingError
from library.models import build_tiny_bundle
from library.sampling.infotext import parse_infotext, save_png
from library.sampling.pipeline import (
    SampleRequest,
    SamplingSession,
    generate,
    plan_jobs,
)
from library.sampling.training_samples import (
    parse_prompt_line,
    sample_for_training,
    training_sample_path,
)

BASE = {"prompt": "a (red:1.2) cube", "negative_prompt": "blurry", "steps": 3, "width": 64, "height": 64, "seed": 1234}



@pytest.fixture(scope="module")
def bundle():
    return build_tiny_bundle(0)


def pixels(img) -> np.ndarray:
    return np.asarray(img.image, dtype=np.int16)


def test_same_seed_same_image_and_seed_changes_it(bundle):
    a = generate(bundle, SampleRequest(**BASE))[0]
    b = generate(bundle, SampleRequest(**BASE))[0]
    c = generate(bundle, SampleRequest(**{**BASE, "seed": 99}))[0]
    assert a.image.size == (64, 64) and a.seed == 1234 and pixels(a).std() > 1  # a real image, not NaN-black
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))


def test_random_seed_is_reported_and_reproduces(bundle):
    a = generate(bundle, SampleRequest(**{**BASE, "seed": -1, "sampler": "DPM++ 2M Karras"}))[0]
    assert 0 <= a.seed < 2**32 and f"Seed: {a.seed}," in a.parameters
    again = generate(bundle, SampleRequest(**{**BASE, "seed": a.seed, "sampler": "DPM++ 2M Karras"}))[0]
    assert np.array_equal(pixels(a), pixels(again))


def test_batch_images_use_consecutive_seeds_and_match_single_runs(bundle):
    batch = generate(bundle, SampleRequest(**{**BASE, "batch_size": 2, "batch_count": 2}))
    assert [im.seed for im in batch] == [1234, 1235, 1236, 1237]
    alone = generate(bundle, SampleRequest(**{**BASE, "seed": 1235}))[0]
    # batching changes float summation order in the UNet at most by a rounding step
    assert np.abs(pixels(batch[1]) - pixels(alone)).max() <= 1


def test_lora_weight_zero_is_exactly_base_and_base_weights_untouched(bundle, sdscripts_lora_dir):
    lora = sdscripts_lora_dir / "tinylora.safetensors"
    disk_before = hashlib.sha256(lora.read_bytes()).hexdigest()
    weights_before = {k: v.clone() for k, v in bundle.unet.state_dict().items()}
    base = generate(bundle, SampleRequest(**BASE))[0]
    zero = generate(bundle, SampleRequest(**{**BASE, "loras": ((str(lora), 0.0),)}))[0]
    full = generate(bundle, SampleRequest(**{**BASE, "loras": ((str(lora), 1.0),)}))[0]
    assert np.array_equal(pixels(base), pixels(zero))
    assert not np.array_equal(pixels(base), pixels(full))
    after = bundle.unet.state_dict()
    assert after.keys() == weights_before.keys()
    assert all(torch.equal(after[k], weights_before[k]) for k in after)
    assert hashlib.sha256(lora.read_bytes()).hexdigest() == disk_before


def test_lora_tag_equals_explicit_lora(bundle, sdscripts_lora_dir):
    tagged = generate(bundle, SampleRequest(**{**BASE, "prompt": BASE["prompt"] + " <lora:tinylora:0.7>",
                                               "lora_dir": str(sdscripts_lora_dir)}))[0]
    explicit = generate(bundle, SampleRequest(**{**BASE, "prompt": BASE["prompt"] + " ",
                                                 "loras": ((str(sdscripts_lora_dir / "tinylora.safetensors"), 0.7),)}))[0]
    assert np.array_equal(pixels(tagged), pixels(explicit))
    assert 'Lora hashes: "tinylora: ' in tagged.parameters


def test_swapping_epochs_reuses_the_network(bundle, sdscripts_lora_dir):
    session = SamplingSession(bundle)
    first = str(sdscripts_lora_dir / "tinylora-000001.safetensors")
    final = str(sdscripts_lora_dir / "tinylora.safetensors")
    session.generate(SampleRequest(**{**BASE, "loras": ((first, 1.0),)}))
    swapped = session.generate(SampleRequest(**{**BASE, "loras": ((final, 1.0),)}))[0]
    assert session.loras.swaps == 1
    session.loras.clear()
    fresh = generate(bundle, SampleRequest(**{**BASE, "loras": ((final, 1.0),)}))[0]
    assert np.array_equal(pixels(swapped), pixels(fresh))


def test_parameters_text_and_png_chunk(bundle, tmp_path):
    img = generate(bundle, SampleRequest(**{**BASE, "clip_skip": 2, "cfg_scale": 7.0}))[0]
    facts = bundle.facts
    lines = img.parameters.split("\n")
    assert lines[0] == "a (red:1.2) cube" and lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith(
        f"Steps: 3, Sampler: Euler a, Schedule type: Uniform, CFG scale: 7, Seed: 1234, Size: 64x64, "
        f"Model hash: {facts.model_hash[:10]}, Model: {facts.name}, Clip skip: 2, RNG: CPU, Version: lorasmith")
    path = save_png(img.image, tmp_path / "x.png", img.parameters)
    with Image.open(path) as png:
        assert png.text["parameters"] == img.parameters
    prompt, negative, params = parse_infotext(img.parameters)
    assert (prompt, negative, params["Seed"], params["Size"]) == ("a (red:1.2) cube", "blurry", "1234", "64x64")


def test_bad_request_lists_every_problem(bundle):
    with pytest.raises(SamplingError) as exc:
        generate(bundle, SampleRequest(prompt="x", width=60, height=64, steps=0, sampler="nope"))
    text = str(exc.value)
    assert "60x64" in text and "steps 0" in text and "nope" in text


def test_missing_lora_tag_names_folder(bundle, tmp_path):
    with pytest.raises(SamplingError, match="nothere"):
        generate(bundle, SampleRequest(prompt="x <lora:nothere:1>", lora_dir=str(tmp_path), steps=1,
                                       width=64, height=64))


def test_prompt_line_options():
    opts = parse_prompt_line("photo of ohwx man --n blurry, lowres --w 640 --h 512 --d 7 --l 6.5 --s 20 --ss k_euler_a")
    assert opts == {"prompt": "photo of ohwx man", "negative_prompt": "blurry, lowres", "width": 640, "height": 512,
                    "seed": 7, "cfg_scale": 6.5, "steps": 20, "sampler": "k_euler_a"}
    assert parse_prompt_line("just text")["cfg_scale"] == 7.5
    with pytest.raises(SamplingError, match="--zz"):
        parse_prompt_line("x --zz 3")


def test_sample_for_training_keeps_modes_and_sizes(bundle, tmp_path):
    bundle.unet.train()
    img = sample_for_training(bundle, None, "a cube --w 64 --h 48 --d 3 --s 2", sampler="euler_a")
    assert bundle.unet.training
    bundle.unet.eval()
    assert img.image.size == (64, 48) and img.seed == 3 and "Sampler: Euler a" in img.parameters
    path = training_sample_path(tmp_path, "name", 0, img.seed, epoch=3)
    assert path.parent.name == "sample" and path.name.startswith("name_e000003_00_") and path.name.endswith("_3.png")


def test_sample_from_config_reads_txt_and_json_prompt_files(bundle, tmp_path):
    import json
    from types import SimpleNamespace

    from library.sampling.training_samples import (
        read_prompt_entries,
        sample_from_config,
    )

    txt = tmp_path / "prompts.txt"
    txt.write_text("# comment\na cube --w 64 --h 64 --s 1\n\nblue sky --w 64 --h 64 --s 1 --d 9\n", encoding="utf-8")
    cfg = SimpleNamespace(sample_prompts=str(txt), sample_sampler="k_euler", seed=100, clip_skip=None,
                          output_dir=str(tmp_path / "out"), output_name="run")
    paths = sample_from_config(cfg, bundle, None, epoch=2)
    assert [p.name.split("_")[:3] for p in paths] == [["run", "e000002", "00"], ["run", "e000002", "01"]]
    assert paths[0].name.endswith("_100.png") and paths[1].name.endswith("_9.png")
    with Image.open(paths[0]) as png:
        assert "Sampler: Euler," in png.text["parameters"] and "Size: 64x64" in png.text["parameters"]
    js = tmp_path / "prompts.json"
    js.write_text(json.dumps([{"prompt": "x", "scale": 5, "sample_steps": 3, "sample_sampler": "ddim"}]), "utf-8")
    assert read_prompt_entries(js)[0] == {"prompt": "x", "negative_prompt": "", "width": 512, "height": 512,
                                          "seed": None, "cfg_scale": 5, "steps": 3, "sampler": "ddim"}
    js.write_text(json.dumps([{"prompt": "x", "guidance": 5}]), "utf-8")
    with pytest.raises(SamplingError, match="guidance"):
        read_prompt_entries(js)


def test_img2img_runs_the_tail_of_the_schedule_as_a1111():
    from library.sampling.pipeline import img2img_sigmas

    sigmas = torch.arange(21, 0, -1, dtype=torch.float32)  # 20 steps + the final zero, stand-in values
    tail = img2img_sigmas(sigmas, 20, 0.3)  # int(0.3 * 20) = 6 -> 7 model steps
    assert tail.tolist() == sigmas[13:].tolist() and len(tail) == 8
    assert img2img_sigmas(sigmas, 20, 1.0).tolist() == sigmas[0:].tolist()  # 0.999 cap: all 20 steps
    assert len(img2img_sigmas(sigmas, 20, 0.01)) == 2  # at least one step


def _round_trip(bundle, image: Image.Image) -> np.ndarray:
    from library.sampling.pipeline import decode_latents, encode_images

    with torch.no_grad():
        latents = encode_images(bundle.vae, [image], 64, 64)
    return np.asarray(decode_latents(bundle.vae, latents)[0], dtype=np.int16)


def test_img2img_keeps_the_init_image_at_low_strength_and_redraws_it_at_full():
    from library.world.generator import generate_world
    from library.world.model import build_tiny_world_bundle

    world_bundle = build_tiny_world_bundle(torch.float32)  # a trained model: low strength must keep the picture
    init = Image.fromarray(generate_world(1, seed=5).images[0]).resize((48, 48))  # resized back ("Just resize")
    reference = _round_trip(world_bundle, init)
    session = SamplingSession(world_bundle)
    errors, texts = {}, {}
    for strength in (0.1, 1.0):
        request = SampleRequest(**{**BASE, "prompt": "a shape", "steps": 20, "denoising_strength": strength})
        _seed, jobs = plan_jobs(request)
        made = session.run_jobs(request, jobs, init_images=[init])[0]
        errors[strength] = np.abs(pixels(made) - reference).mean()
        texts[strength] = made.parameters
    assert errors[0.1] < 0.25 * errors[1.0], errors
    assert "Denoising strength: 0.1," in texts[0.1] and "Denoising strength: 1," in texts[1.0]
    assert "Denoising strength" not in generate(world_bundle, SampleRequest(**BASE))[0].parameters


def test_img2img_batches_match_single_images_and_bad_input_is_named(bundle):
    request = SampleRequest(**{**BASE, "steps": 4, "denoising_strength": 0.5, "batch_size": 2})
    _seed, jobs = plan_jobs(request)
    inits = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    session = SamplingSession(bundle)
    together = session.run_jobs(request, jobs, max_batch=2, init_images=inits)
    alone = [session.run_jobs(request, [job], init_images=[im])[0] for job, im in zip(jobs, inits)]
    for a, b in zip(together, alone):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1
    with pytest.raises(SamplingError, match="one init image per image"):
        session.run_jobs(request, jobs, init_images=inits[:1])
    with pytest.raises(SamplingError, match="denoising_strength 1.5"):
        generate(bundle, SampleRequest(**{**BASE, "denoising_strength": 1.5}))
