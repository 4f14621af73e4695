"""PNG infotext as A1111 writes and reads it: Sampler plus Schedule type, RNG, Model without extension."""
from __future__ import annotations

import dataclasses

import pytest

from library.errors import SamplingError
from library.models import build_tiny_bundle
from library.sampling.infotext import model_label, parse_infotext
from library.sampling.pipeline import SampleRequest, SamplingSession, plan_jobs
from library.sampling.sampler_registry import SAMPLERS, infotext_sampler, resolve_sampler, sampler_from_infotext

# What A1111 1.9+ writes for each of our samplers (its dropdowns: sampler by algorithm, schedule apart).
EXPECTED = {
    "Euler a": ("Euler a", "Uniform"), "Euler": ("Euler", "Uniform"), "LMS": ("LMS", "Uniform"),
    "LMS Karras": ("LMS", "Karras"), "Heun": ("Heun", "Uniform"), "DPM2": ("DPM2", "Uniform"),
    "DPM2 Karras": ("DPM2", "Karras"), "DPM2 a": ("DPM2 a", "Uniform"), "DPM2 a Karras": ("DPM2 a", "Karras"),
    "DPM++ 2M": ("DPM++ 2M", "Uniform"), "DPM++ 2M Karras": ("DPM++ 2M", "Karras"),
    "DPM++ SDE": ("DPM++ SDE", "Uniform"), "DPM++ SDE Karras": ("DPM++ SDE", "Karras"),
    "DDIM": ("DDIM", "Automatic"), "UniPC": ("UniPC", "Automatic"),
}

# Facts from A1111's own tables. modules/sd_samplers_kdiffusion.py samplers_k_diffusion:
# label -> (k-diffusion function, options['scheduler'] or None); modules/sd_samplers_timesteps.py: DDIM, UniPC.
A1111_K_SAMPLERS = {
    "DPM++ 2M": ("sample_dpmpp_2m", "karras"), "DPM++ SDE": ("sample_dpmpp_sde", "karras"),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", "exponential"), "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", "karras"),
    "Euler a": ("sample_euler_ancestral", None), "Euler": ("sample_euler", None), "LMS": ("sample_lms", None),
    "Heun": ("sample_heun", None), "DPM2": ("sample_dpm_2", "karras"), "DPM2 a": ("sample_dpm_2_ancestral", "karras"),
}
A1111_TIMESTEP_SAMPLERS = ("DDIM", "PLMS", "UniPC")
# modules/sd_schedulers.py schedulers: label -> name.
A1111_SCHEDULERS = {"Automatic": "automatic", "Uniform": "uniform", "Karras": "karras", "Exponential": "exponential",
                    "Polyexponential": "polyexponential", "SGM Uniform": "sgm_uniform", "KL Optimal": "kl_optimal",
                    "Align Your Steps": "align_your_steps", "Simple": "simple", "Normal": "normal", "DDIM": "ddim",
                    "Beta": "beta"}


def a1111_runs(sampler: str, schedule_type: str | None) -> tuple[str, str]:
    """(k-diffusion function, schedule) A1111 runs for a pasted Sampler / Schedule type; a missing
    schedule type reads as Automatic, which is the table's default or, without one, uniform."""
    if sampler in A1111_TIMESTEP_SAMPLERS:
        return sampler, "timesteps"
    fn, default = A1111_K_SAMPLERS[sampler]
    name = A1111_SCHEDULERS[schedule_type or "Automatic"]
    return fn, (default or "uniform") if name == "automatic" else name


def ours_runs(name: str) -> tuple[str, str]:
    spec = SAMPLERS[name]
    if name in A1111_TIMESTEP_SAMPLERS:
        return name, "timesteps"
    return spec.fn.__name__, {"discrete": "uniform"}.get(spec.schedule, spec.schedule)


@pytest.fixture(scope="module")
def session():
    return SamplingSession(build_tiny_bundle(0))


def _params(session, sampler: str, facts_name: str | None = None) -> dict[str, str]:
    if facts_name is not None:
        session.bundle = dataclasses.replace(session.bundle, facts=dataclasses.replace(session.bundle.facts,
                                                                                        name=facts_name))
    request = SampleRequest(prompt="a cube", steps=2, width=64, height=64, seed=7, sampler=sampler)
    _seed, jobs = plan_jobs(request)
    return parse_infotext(session.infotext(request, jobs[0]))[2]


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_writes_a1111s_pair_and_a1111_runs_what_we_ran(session, name):
    """Issue 24: without Schedule type, A1111 re-sampled DPM2, DPM2 a, DPM++ 2M and DPM++ SDE on Karras."""
    params = _params(session, name)
    assert (params["Sampler"], params.get("Schedule type")) == EXPECTED[name]
    assert a1111_runs(params["Sampler"], params["Schedule type"]) == ours_runs(name)
    assert params["Schedule type"] in A1111_SCHEDULERS


def test_expected_table_covers_every_sampler_and_alias():
    assert set(EXPECTED) == set(SAMPLERS)
    assert infotext_sampler(resolve_sampler("k_dpm_2")) == ("DPM2", "Uniform")


def test_rng_and_model_fields(session):
    params = _params(session, "Euler a")
    assert params["RNG"] == "CPU"  # A1111's randn_source value for noise drawn on the CPU
    assert _params(session, "Euler a", "v1-5-pruned-emaonly.fp16.safetensors")["Model"] == "v1-5-pruned-emaonly.fp16"
    assert _params(session, "Euler a", "model.ckpt")["Model"] == "model"
    assert _params(session, "Euler a", "sd15-diffusers")["Model"] == "sd15-diffusers"


def test_model_label():
    assert model_label("a.b.SAFETENSORS") == "a.b"
    assert model_label("tiny-world") == "tiny-world"
    assert model_label(".safetensors") == ".safetensors"


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_reading_side_round_trips_every_sampler(name):
    spec = SAMPLERS[name]
    assert sampler_from_infotext(*infotext_sampler(spec)) is spec


def test_reading_side_follows_a1111_for_old_and_automatic_infotexts():
    assert sampler_from_infotext("DPM++ 2M Karras").name == "DPM++ 2M Karras"  # pre-1.9 combined name
    assert sampler_from_infotext("DPM++ 2M").name == "DPM++ 2M Karras"  # missing = Automatic = Karras
    assert sampler_from_infotext("DPM++ 2M", "Automatic").name == "DPM++ 2M Karras"
    assert sampler_from_infotext("Euler a").name == "Euler a"
    assert sampler_from_infotext("LMS", "karras").name == "LMS Karras"
    with pytest.raises(SamplingError, match="Exponential"):
        sampler_from_infotext("Euler", "Exponential")
    with pytest.raises(SamplingError, match="Karras"):
        sampler_from_infotext("Euler", "Karras")
