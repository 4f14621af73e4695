"""Samplers and schedules against closed forms.

The dummy model is the exact denoiser of a Gaussian data distribution N(0, s_d^2):
D(x, sigma) = x * s_d^2 / (s_d^2 + sigma^2). Its probability-flow ODE
dx/dsigma = x * sigma / (s_d^2 + sigma^2) has the exact solution
x(sigma) = x(sigma_0) * sqrt((s_d^2 + sigma^2) / (s_d^2 + sigma_0^2)).
"""
from __future__ import annotations

import math

import pytest
import torch

from library.errors import SamplingError
from library.sampling import samplers as S
from library.sampling.sampler_registry import ALIASES, SAMPLERS, resolve_sampler
from library.sampling.schedules import (
    get_sigmas_discrete,
    get_sigmas_karras,
    get_sigmas_leading,
    model_sigmas,
    sigma_to_t,
    t_to_sigma,
)
from library.sampling.unipc import sample_unipc

SD1_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "num_train_timesteps": 1000, "steps_offset": 1, "prediction_type": "epsilon"}


def gaussian_denoiser(s_d: float = 1.0):
    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return x * s_d**2 / (s_d**2 + s**2)
    return model


def run(fn, sigmas, x0=1.0, **kw):
    x = torch.full((1, 1), x0, dtype=torch.float64)
    return float(fn(gaussian_denoiser(), x, torch.tensor(sigmas, dtype=torch.float64), **kw))


# Reference values worked out by hand on sigmas [2, 1, 0], s_d = 1, x = 1:
#   Euler: D(1,2)=0.2, d=0.4, x=0.6; D(0.6,1)=0.3, d=0.3, x=0.3.
#   Heun:  predictor x2=0.6, d2=0.3, x=1-(0.4+0.3)/2=0.65; last step Euler: 0.65-0.325=0.325.
#   Euler a with zero noise: sigma_up=sqrt(3)/2, sigma_down=0.5, x=1+0.4*(0.5-2)=0.4; then 0.4-0.2=0.2.
@pytest.mark.parametrize("fn,expected", [
    (S.sample_euler, 0.3), (S.sample_ddim, 0.3), (S.sample_heun, 0.325),
])
def test_hand_computed_two_steps(fn, expected):
    assert run(fn, [2.0, 1.0, 0.0]) == pytest.approx(expected, abs=1e-12)


def test_euler_ancestral_zero_noise_by_hand():
    zero = lambda s, sn: torch.zeros(1, 1, dtype=torch.float64)
    assert run(S.sample_euler_ancestral, [2.0, 1.0, 0.0], noise_sampler=zero) == pytest.approx(0.2, abs=1e-12)
    # eta = 0 makes the ancestral step a plain Euler step
    assert run(S.sample_euler_ancestral, [2.0, 1.0, 0.0], eta=0.0) == pytest.approx(0.3, abs=1e-12)


def test_dpmpp_2m_by_hand():
    # sigmas [4, 2, 1, 0]: x1 = 9/17, multistep correction Dd = 11/85, x2 = 28/85, last step x = D = 14/85.
    assert run(S.sample_dpmpp_2m, [4.0, 2.0, 1.0, 0.0]) == pytest.approx(14 / 85, abs=1e-12)


def test_lms_first_order_is_euler():
    # With one derivative LMS integrates a constant: the Euler step.
    assert run(S.sample_lms, [2.0, 1.0, 0.0], order=1) == pytest.approx(0.3, abs=1e-12)


def test_lms_coefficients_integrate_polynomials_exactly():
    t = torch.tensor([5.0, 3.0, 2.0, 1.5, 1.0]).double().numpy()
    # sum of the Lagrange-basis integrals is the interval length; order 3 at i=2 uses nodes t2, t1, t0
    coeffs = [S.linear_multistep_coeff(3, t, 2, j) for j in range(3)]
    assert sum(coeffs) == pytest.approx(t[3] - t[2], abs=1e-12)
    # integrating tau^2 via the basis: sum c_j * t_{i-j}^2 == (t3^3 - t2^3) / 3
    nodes = [t[2], t[1], t[0]]
    assert sum(c * n**2 for c, n in zip(coeffs, nodes)) == pytest.approx((t[3] ** 3 - t[2] ** 3) / 3, abs=1e-12)


DETERMINISTIC = [S.sample_euler, S.sample_heun, S.sample_lms, S.sample_dpm_2, S.sample_dpmpp_2m, sample_unipc]


# first-order Euler is within 5 % after 40 Karras steps, the higher-order ones within 0.5 %
@pytest.mark.parametrize("fn,rel", zip(DETERMINISTIC, [5e-2] + [5e-3] * 5), ids=lambda f: getattr(f, "__name__", ""))
def test_deterministic_samplers_converge_to_exact_ode_solution(fn, rel):
    sigma_max = 14.6146
    exact = 1.0 / math.sqrt(1 + sigma_max**2)
    sigmas = get_sigmas_karras(40, 0.0292, sigma_max).tolist()
    assert run(fn, sigmas) == pytest.approx(exact, rel=rel)


def test_higher_order_samplers_are_more_accurate_than_euler():
    sigma_max = 14.6146
    exact = 1.0 / math.sqrt(1 + sigma_max**2)
    sigmas = get_sigmas_karras(10, 0.0292, sigma_max).tolist()
    err = {fn.__name__: abs(run(fn, sigmas) - exact) for fn in DETERMINISTIC}
    for name in ("sample_heun", "sample_dpmpp_2m", "sample_unipc", "sample_lms"):
        assert err[name] < err["sample_euler"] / 2, err


@pytest.mark.parametrize("name", ["Euler a", "DPM++ SDE Karras", "DPM2 a"])
def test_stochastic_samplers_reach_data_variance(name):
    """Started from N(0, s_d^2 + sigma_max^2), exact-denoiser ancestral sampling ends near N(0, s_d^2).

    The discretisation bias shrinks like 1/steps (std 0.79 at 10 steps, 0.97 at 100 for Euler a),
    so 200 steps must land within 3 %.
    """
    spec = resolve_sampler(name)
    sigmas = spec.sigmas(200, SD1_CONFIG)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 20000, generator=gen, dtype=torch.float64) * (1 + float(sigmas[0]) ** 2) ** 0.5
    ns = lambda s, sn: torch.randn(x.shape, generator=gen, dtype=torch.float64)
    out = spec.fn(gaussian_denoiser(), x, sigmas.double(), noise_sampler=ns)
    assert float(out.std()) == pytest.approx(1.0, abs=0.03)


def test_karras_schedule_endpoints_and_rho():
    s = get_sigmas_karras(5, 0.1, 10.0, rho=7.0)
    assert s.shape == (6,) and float(s[-1]) == 0.0
    assert float(s[0]) == pytest.approx(10.0) and float(s[4]) == pytest.approx(0.1)
    # midpoint by eq. 5: ((10^(1/7) + 0.1^(1/7)) / 2)^7
    assert float(s[2]) == pytest.approx(((10 ** (1 / 7) + 0.1 ** (1 / 7)) / 2) ** 7)


def test_model_sigmas_sd1_endpoints():
    # SD 1.x's known range (k-diffusion / A1111 report sigma_min 0.0292, sigma_max 14.6146)
    s = model_sigmas(SD1_CONFIG)
    assert float(s[0]) == pytest.approx(0.0292, abs=1e-4)
    assert float(s[-1]) == pytest.approx(14.6146, abs=1e-3)


def test_sigma_t_roundtrip_and_discrete_schedule():
    log_sigmas = model_sigmas(SD1_CONFIG).log()
    t = torch.tensor([0.0, 10.5, 999.0, 500.25], dtype=torch.float64)
    assert torch.allclose(sigma_to_t(t_to_sigma(t, log_sigmas), log_sigmas), t, atol=1e-6)
    s = get_sigmas_discrete(10, SD1_CONFIG)
    assert s.shape == (11,) and float(s[-1]) == 0.0
    assert float(s[0]) == pytest.approx(14.6146, abs=1e-3) and float(s[-2]) == pytest.approx(0.0292, abs=1e-4)
    assert bool((s[:-1][1:] < s[:-1][:-1]).all())


def test_leading_schedule_uses_ddim_timesteps():
    s = get_sigmas_leading(10, SD1_CONFIG)
    table = model_sigmas(SD1_CONFIG)
    # DDIM "leading": t = 901, 801, ..., 1 for 10 steps with steps_offset 1
    assert torch.allclose(s[:-1], table[[901, 801, 701, 601, 501, 401, 301, 201, 101, 1]])


def test_every_name_and_alias_resolves():
    for name in list(SAMPLERS) + list(ALIASES) + ["euler A", "dpm++ 2m karras"]:
        assert resolve_sampler(name).name in SAMPLERS
    assert resolve_sampler("k_euler_a").name == "Euler a"
    assert resolve_sampler("ddim").name == "DDIM"


def test_unknown_sampler_lists_choices():
    with pytest.raises(SamplingError) as exc:
        resolve_sampler("Euler b")
    assert "Euler b" in str(exc.value) and "DPM++ 2M Karras" in str(exc.value) and "k_dpm_2_a" in str(exc.value)


def test_every_registered_sampler_runs_on_a_schedule():
    for spec in SAMPLERS.values():
        sigmas = spec.sigmas(6, SD1_CONFIG)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(2, 3, generator=gen, dtype=torch.float64) * float(sigmas[0])
        ns = lambda s, sn, x=x, gen=gen: torch.randn(x.shape, generator=gen, dtype=torch.float64)
        out = spec.fn(gaussian_denoiser(), x, sigmas.double(), noise_sampler=ns)
        assert out.shape == x.shape and bool(torch.isfinite(out).all()), spec.name


def test_every_trainconfig_sample_sampler_choice_resolves():
    from library.config import SAMPLER_NAMES

    assert {n: resolve_sampler(n).name for n in SAMPLER_NAMES}["dpm_2_a"] == "DPM2 a"
