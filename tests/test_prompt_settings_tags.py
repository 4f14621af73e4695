"""Settings in the prompt (the Randomizer Keywords extension's <cfg_scale:5>, <steps:20> ... tags)."""
from __future__ import annotations

import pytest
from PIL import Image

from library.cli import main
from library.errors import SamplingError
from library.models import build_tiny_bundle
from library.sampling.infotext import parse_infotext
from library.sampling.pipeline import SampleRequest, SamplingSession, plan_jobs
from library.sampling.prompt_parser import extract_lora_tags, extract_prompt_tags

BASE = {"prompt": "a cube", "steps": 2, "width": 64, "height": 64, "seed": 5}


@pytest.fixture(scope="module")
def bundle():
    return build_tiny_bundle(0)


@pytest.mark.parametrize("tag, field, value", [
    ("<cfg_scale:5>", "cfg_scale", 5.0),
    ("<steps:12>", "steps", 12),
    ("<sampler_name:DPM++ 2M Karras>", "sampler", "DPM++ 2M Karras"),
    ("<width:128>", "width", 128),
    ("<height:96>", "height", 96),
    ("<clip_skip:2>", "clip_skip", 2),
    ("<denoising_strength:0.4>", "denoising_strength", 0.4),
])
def test_each_tag_changes_the_request_and_leaves_the_text(tag, field, value):
    _seed, [job] = plan_jobs(SampleRequest(**{**BASE, "prompt": f"a {tag} cube"}))
    assert getattr(job.request, field) == value
    assert job.text == "a  cube" and "<" not in job.text
    assert job.prompt == f"a {tag} cube"  # the infotext prompt keeps the tag, as A1111 writes it


def test_seed_tag_sets_the_image_seed_and_no_tag_keeps_the_batch_request():
    _seed, [job] = plan_jobs(SampleRequest(**{**BASE, "prompt": "a cube <seed:77>"}))
    assert job.seed == 77 and job.request is None and job.text == "a cube "
    _seed, [plain] = plan_jobs(SampleRequest(**BASE))
    assert plain.seed == 5 and plain.request is None


def test_tags_in_the_negative_prompt_count_and_the_positive_wins():
    _seed, [job] = plan_jobs(SampleRequest(**{**BASE, "prompt": "x <steps:4>",
                                              "negative_prompt": "blur <steps:9> <cfg_scale:3>"}))
    assert job.request.steps == 4 and job.request.cfg_scale == 3.0 and job.negative_text == "blur  "


def test_unknown_tag_is_refused_with_its_name():
    with pytest.raises(SamplingError, match="<cfgscale:5>") as err:
        plan_jobs(SampleRequest(**{**BASE, "prompt": "a <cfgscale:5> cube"}))
    assert any("<cfg_scale:...>" in p for p in err.value.problems)
    # LoRA tags still work beside settings; <hypernet:...> is left alone as before
    text, loras, settings = extract_prompt_tags("a <lora:x:0.5> <steps:3> <hypernet:h:1>")
    assert [(t.name, t.weight) for t in loras] == [("x", 0.5)] and settings == {"steps": 3}
    assert text == "a   <hypernet:h:1>"


@pytest.mark.parametrize("prompt, needle", [
    ("<steps:abc>", "'abc', not a whole number"),
    ("<cfg_scale:high>", "not a number"),
    ("<steps:>", "has no value"),
])
def test_bad_values_are_refused_naming_the_tag(prompt, needle):
    with pytest.raises(SamplingError, match=needle):
        plan_jobs(SampleRequest(**{**BASE, "prompt": prompt}))


def test_unknown_sampler_and_bad_size_list_the_choices():
    with pytest.raises(SamplingError) as err:
        plan_jobs(SampleRequest(**{**BASE, "prompt": "a <sampler_name:Euler z> <width:63>"}))
    text = str(err.value)
    assert "Euler z" in text and "DPM++ 2M Karras" in text and "63x64" in text


def test_extract_lora_tags_keeps_settings_for_training_samples():
    text, tags = extract_lora_tags("a <lora:x> <steps:3> cube")
    assert text == "a  <steps:3> cube" and [t.name for t in tags] == ["x"]
    with pytest.raises(SamplingError, match="<foo:1>"):
        extract_lora_tags("a <foo:1>")


def test_dynamic_prompt_varies_the_setting_per_image_and_infotext_shows_it(bundle):
    request = SampleRequest(**{**BASE, "prompt": "a cube {<cfg_scale:5>|<cfg_scale:7.5>}", "batch_size": 8})
    _seed, jobs = plan_jobs(request)
    cfgs = [job.request.cfg_scale for job in jobs]
    assert set(cfgs) == {5.0, 7.5}  # seeds 5..12 pick both
    assert [j.request.cfg_scale for j in plan_jobs(request)[1]] == cfgs  # a fixed seed picks the same again
    images = SamplingSession(bundle).run_jobs(request, jobs[:3], max_batch=3)
    for job, image in zip(jobs, images):
        _p, _n, params = parse_infotext(image.parameters)
        assert params["CFG scale"] == ("5" if job.request.cfg_scale == 5.0 else "7.5")
        assert params["Seed"] == str(job.seed)
        assert image.request.cfg_scale == job.request.cfg_scale


def test_steps_size_and_sampler_tags_reach_the_sampler(bundle):
    request = SampleRequest(**{**BASE, "prompt": "a <steps:3> <width:32> <height:48> <sampler_name:Euler> <seed:9>"})
    calls = []
    [image] = SamplingSession(bundle).generate(request, on_step=calls.append)
    assert len(calls) == 3 and image.image.size == (32, 48) and image.seed == 9
    _p, _n, params = parse_infotext(image.parameters)
    assert (params["Steps"], params["Size"], params["Sampler"], params["Seed"]) == ("3", "32x48", "Euler", "9")


def test_checkpoint_and_vae_tags_must_name_what_is_loaded(bundle):
    session = SamplingSession(bundle)
    _s, jobs = plan_jobs(SampleRequest(**{**BASE, "prompt": "a <checkpoint:tiny.safetensors> <steps:1>"}))
    assert session.run_jobs(SampleRequest(**BASE), jobs)  # the loaded model: fine
    _s, jobs = plan_jobs(SampleRequest(**{**BASE, "prompt": "a <checkpoint:other_model>"}))
    with pytest.raises(SamplingError, match="<checkpoint:other_model>: the loaded checkpoint is tiny"):
        session.run_jobs(SampleRequest(**BASE), jobs)
    _s, jobs = plan_jobs(SampleRequest(**{**BASE, "prompt": "a <vae:vae-ft-mse-840000>"}))
    with pytest.raises(SamplingError, match="<vae:vae-ft-mse-840000>") as err:
        session.run_jobs(SampleRequest(**BASE), jobs)
    assert any("--vae" in p for p in err.value.problems)


def test_sample_command_writes_the_tag_values(tmp_path):
    out = tmp_path / "out"
    rc = main(["sample", "--pretrained_model_name_or_path", "tiny", "--prompt", "a cube <steps:3> <cfg_scale:4>",
               "--width", "64", "--height", "64", "--seed", "3", "--output_dir", str(out)])
    assert rc == 0
    with Image.open(out / "00000-3.png") as png:
        params = png.text["parameters"]
    assert "Steps: 3," in params and "CFG scale: 4," in params


def test_sample_command_refuses_an_unknown_tag_before_loading(tmp_path, capsys):
    rc = main(["sample", "--pretrained_model_name_or_path", "/nonexistent/model", "--prompt", "a <cfg:5>",
               "--output_dir", str(tmp_path)])
    assert rc != 0
    assert "<cfg:5>" in capsys.readouterr().err


def test_checkpoint_tag_switches_models_from_models_dir(tmp_path):
    from library.models.saving import save_single_file

    models = tmp_path / "models"
    models.mkdir()
    save_single_file(build_tiny_bundle(1), models / "other.safetensors")
    out = tmp_path / "out"
    rc = main(["sample", "--pretrained_model_name_or_path", "tiny", "--prompt", "a cube {<checkpoint:other>|}",
               "--models_dir", str(models), "--steps", "1", "--width", "64", "--height", "64", "--seed", "0",
               "--batch_size", "4", "--output_dir", str(out)])
    assert rc == 0
    labels = []
    for path in sorted(out.glob("*.png")):
        with Image.open(path) as png:
            labels.append(parse_infotext(png.text["parameters"])[2]["Model"])
    assert sorted(set(labels)) == ["other", "tiny"] and len(labels) == 4
    _s, [job] = plan_jobs(SampleRequest(**{**BASE, "prompt": "<checkpoint:other>", "models_dir": str(models)}))
    assert job.checkpoint == str(models / "other.safetensors")


def test_checkpoint_tag_stays_inside_models_dir(tmp_path):
    from library.models.saving import save_single_file

    (tmp_path / "models").mkdir()
    save_single_file(build_tiny_bundle(1), tmp_path / "secret.safetensors")
    with pytest.raises(SamplingError, match=r"<checkpoint:\.\./secret>: no such file in "):
        plan_jobs(SampleRequest(**{**BASE, "prompt": "<checkpoint:../secret>", "models_dir": str(tmp_path / "models")}))
    with pytest.raises(SamplingError, match="no such file in "):  # a path is not taken from a prompt for models
        plan_jobs(SampleRequest(**{**BASE, "prompt": f"<checkpoint:{tmp_path / 'secret.safetensors'}>",
                                   "models_dir": str(tmp_path / "models")}))
