"""Our samplers agree with diffusers' scheduler of the same name on the tiny model's UNet.

Both sides start from the same noise and get the same conditioning; diffusers runs its
usual `scale_model_input` / UNet / `step` loop, we run the sampler on the scheduler's own
sigmas through `DiscreteDenoiser`. VP-space schedulers (DDIM, DPM-Solver, UniPC) keep
latents as sqrt(abar) * x, so their start is our x times 1/sqrt(1 + sigma_max^2); at
sigma = 0 the two coordinates coincide.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

from library.models import build_tiny_bundle
from library.sampling import samplers as S
from library.sampling.denoiser import DiscreteDenoiser
from library.sampling.sampler_registry import resolve_sampler
from library.sampling.unipc import sample_unipc

STEPS = 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny UNet is ~10x faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    bundle = build_tiny_bundle(0)
    gen = torch.Generator().manual_seed(3)
    cond = torch.randn(1, 77, bundle.unet.config.cross_attention_dim, generator=gen)
    noise = torch.randn(1, 4, 16, 16, generator=gen)
    return bundle, cond, noise


def run_diffusers(scheduler, unet, cond, noise, generator=None):
    scheduler.set_timesteps(STEPS)
    x = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(scheduler.scale_model_input(x, t), t, encoder_hidden_states=cond).sample
            kw = {"generator": generator} if generator is not None else {}
            x = scheduler.step(eps, t, x, **kw).prev_sample
    return x


def run_ours(fn, bundle, cond, x, sigmas, **kw):
    den = DiscreteDenoiser(bundle.unet, bundle.scheduler_config)
    model = lambda x, sigma: den(x, sigma, cond)
    return fn(model, x, torch.as_tensor(sigmas, dtype=torch.float32), **kw)


def vp_start(noise, sigma_max):
    return noise * (1 + float(sigma_max) ** 2) ** 0.5


@pytest.mark.parametrize("cls,fn", [
    (EulerDiscreteScheduler, S.sample_euler),
    (HeunDiscreteScheduler, S.sample_heun),
    (LMSDiscreteScheduler, S.sample_lms),
])
def test_k_style_schedulers_match(tiny, cls, fn):
    bundle, cond, noise = tiny
    sched = cls.from_config(bundle.scheduler_config)  # "leading" spacing: integer timesteps
    ref = run_diffusers(sched, bundle.unet, cond, noise)
    sched.set_timesteps(STEPS)
    sigmas = sched.sigmas if cls is not HeunDiscreteScheduler else torch.cat([sched.sigmas[::2], sched.sigmas[-1:]])
    ours = run_ours(fn, bundle, cond, noise * sched.init_noise_sigma, sigmas)
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-4), float((ours - ref).abs().max())


def test_euler_ancestral_matches_with_same_noise(tiny):
    bundle, cond, noise = tiny
    sched = EulerAncestralDiscreteScheduler.from_config(bundle.scheduler_config)
    ref = run_diffusers(sched, bundle.unet, cond, noise, generator=torch.Generator().manual_seed(7))
    sched.set_timesteps(STEPS)
    gen = torch.Generator().manual_seed(7)
    ns = lambda s, sn: torch.randn(noise.shape, generator=gen)
    ours = run_ours(S.sample_euler_ancestral, bundle, cond, noise * sched.init_noise_sigma, sched.sigmas,
                    noise_sampler=ns)
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-4), float((ours - ref).abs().max())


def test_ddim_matches(tiny):
    bundle, cond, noise = tiny
    sched = DDIMScheduler.from_config(bundle.scheduler_config, set_alpha_to_one=True, clip_sample=False)
    ref = run_diffusers(sched, bundle.unet, cond, noise)
    spec = resolve_sampler("DDIM")
    sigmas = spec.sigmas(STEPS, bundle.scheduler_config)
    ours = run_ours(spec.fn, bundle, cond, vp_start(noise, sigmas[0]), sigmas)
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-4), float((ours - ref).abs().max())


def test_dpmpp_2m_karras_matches(tiny):
    bundle, cond, noise = tiny
    sched = DPMSolverMultistepScheduler.from_config(
        bundle.scheduler_config, use_karras_sigmas=True, algorithm_type="dpmsolver++", solver_order=2,
        final_sigmas_type="zero")
    ref = run_diffusers(sched, bundle.unet, cond, noise)
    spec = resolve_sampler("DPM++ 2M Karras")
    sigmas = spec.sigmas(STEPS, bundle.scheduler_config)
    assert torch.allclose(sigmas.float(), sched.sigmas.float(), rtol=1e-4, atol=1e-6)
    ours = run_ours(spec.fn, bundle, cond, vp_start(noise, sigmas[0]), sigmas)
    # diffusers rounds each Karras sigma's timestep to an integer for the UNet; we pass it fractional
    # (the random tiny UNet's outputs reach |x| ~ 30, so this is a relative 1e-3)
    assert float((ours - ref).abs().max()) < 1e-3 * float(ref.abs().max())


@pytest.mark.parametrize("order,variant", [(2, "bh2"), (3, "bh1")])
def test_unipc_matches(tiny, order, variant):
    bundle, cond, noise = tiny
    # diffusers' bh1 update multiplies B(h) = -inf by 0 on a final step to sigma = 0 (NaN),
    # so both sides stop at sigma_min and ours is brought into VP coordinates at the end.
    sched = UniPCMultistepScheduler.from_config(
        bundle.scheduler_config, solver_order=order, solver_type=variant, final_sigmas_type="sigma_min")
    ref = run_diffusers(sched, bundle.unet, cond, noise)
    sched.set_timesteps(STEPS)
    sigmas = sched.sigmas
    ours = run_ours(sample_unipc, bundle, cond, vp_start(noise, sigmas[0]), sigmas, order=order, variant=variant)
    ours = ours / (1 + float(sigmas[-1]) ** 2) ** 0.5
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-4), float((ours - ref).abs().max())
