"""Samplers as pure functions with one shared signature, k-diffusion style.

Every sampler is ``sample_x(model, x, sigmas, *, extra_args=None, callback=None,
noise_sampler=None) -> x`` where ``model(x, sigma, **extra_args)`` returns the
denoised estimate D(x, sigma) (Karras et al. 2022), ``x`` starts at
``noise * sigmas[0]`` and ``sigmas`` is a descending schedule ending in the final
level (see schedules.py). Deterministic samplers ignore ``noise_sampler``;
ancestral/SDE ones call ``noise_sampler(sigma, sigma_next)`` for unit Gaussian
noise shaped like ``x``. The registry that maps A1111 and sd-scripts names to
these functions lives in sampler_registry.py.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Model = Callable[..., torch.Tensor]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / _bcast(sigma, x)


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic part down to sigma_down and fresh noise sigma_up (k-diffusion)."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def default_noise_sampler(x: torch.Tensor) -> NoiseSampler:
    """Unit Gaussian noise from torch's global generator (use pipeline's seeded one for reproducibility)."""
    return lambda sigma, sigma_next: torch.randn_like(x)


@torch.no_grad()
def sample_euler(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn)."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        denoised = model(x, _sigma_batch(sigmas[i], x), **extra_args)
        x = x + to_d(x, sigmas[i], denoised) * _f(sigmas[i + 1] - sigmas[i])
        _report(callback, i, x, sigmas, denoised)
    return x


@torch.no_grad()
def sample_ddim(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Deterministic DDIM (Song et al. 2021, eta = 0).

    In the x0 + sigma*eps parametrisation DDIM's update x' = D + sigma' * (x - D)/sigma
    is exactly an Euler step, so DDIM is Euler run on DDIM's "leading" timesteps.
    """
    return sample_euler(model, x, sigmas, extra_args=extra_args, callback=callback)


@torch.no_grad()
def sample_euler_ancestral(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                           callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
                           eta: float = 1.0) -> torch.Tensor:
    """Ancestral Euler: an Euler step down to sigma_down, then fresh noise of size sigma_up (k-diffusion)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = _f(sigmas[i]), _f(sigmas[i + 1])
        denoised = model(x, _sigma_batch(sigmas[i], x), **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        if sigma_next > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
        _report(callback, i, x, sigmas, denoised)
    return x


@torch.no_grad()
def sample_heun(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1); Euler on the step to sigma = 0."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = _f(sigmas[i]), _f(sigmas[i + 1])
        denoised = model(x, _sigma_batch(sigmas[i], x), **extra_args)
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, _sigma_batch(sigmas[i + 1], x), **extra_args)
            x = x + (d + to_d(x_2, sigma_next, denoised_2)) / 2 * dt
        _report(callback, i, x, sigmas, denoised)
    return x


@torch.no_grad()
def sample_dpm_2(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DPM-Solver-2 as a midpoint method in log-sigma (Karras et al. 2022 / k-diffusion `sample_dpm_2`)."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = _f(sigmas[i]), _f(sigmas[i + 1])
        denoised = model(x, _sigma_batch(sigmas[i], x), **extra_args)
        d = to_d(x, sigma, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
        else:
            x = _midpoint_step(model, x, d, sigma, sigma_next, extra_args)
        _report(callback, i, x, sigmas, denoised)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                           callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
                           eta: float = 1.0) -> torch.Tensor:
    """Ancestral DPM-Solver-2: the midpoint step down to sigma_down, then noise sigma_up (k-diffusion)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = _f(sigmas[i]), _f(sigmas[i + 1])
        denoised = model(x, _sigma_batch(sigmas[i], x), **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            x = _midpoint_step(model, x, d, sigma, sigma_down, extra_args)
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigma_up
        _report(callback, i, x, sigmas, denoised)
    return x


def _midpoint_step(model: Model, x: torch.Tensor, d: torch.Tensor, sigma: float, sigma_to: float,
                   extra_args: dict) -> torch.Tensor:
    sigma_mid = float(np.exp((np.log(sigma) + np.log(sigma_to)) / 2))
    x_2 = x + d * (sigma_mid - sigma)
    denoised_2 = model(x_2, _sigma_batch(sigma_mid, x), **extra_args)
    return x + to_d(x_2, sigma_mid, denoised_2) * (sigma_to - sigma)


def linear_multistep_coeff(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the j-th Lagrange basis polynomial on t_i, t_{i-1}, ... (LMS).

    The integrand is a polynomial, so it is integrated exactly with numpy instead of quadrature.
    """
    nodes = [t[i - k] for k in range(order)]
    poly = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            poly *= np.polynomial.Polynomial([-nodes[k], 1.0]) / (nodes[j] - nodes[k])
    antiderivative = poly.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


@torch.no_grad()
def sample_lms(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
               callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
               order: int = 4) -> torch.Tensor:
    """Linear multistep (Adams–Bashforth in sigma) over the last `order` derivatives (k-diffusion `sample_lms`)."""
    extra_args = extra_args or {}
    t = sigmas.detach().cpu().double().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, _sigma_batch(sigmas[i], x), **extra_args)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, t, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
        _report(callback, i, x, sigmas, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                    callback: Callback | None = None, noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), multistep second order in lambda = -log sigma (Lu et al. 2022, Algorithm 2)."""
    extra_args = extra_args or {}
    old_denoised = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = _f(sigmas[i]), _f(sigmas[i + 1])
        denoised = model(x, _sigma_batch(sigmas[i], x), **extra_args)
        if sigma_next == 0:
            x = denoised
        else:
            h = np.log(sigma) - np.log(sigma_next)
            if old_denoised is None:
                denoised_d = denoised
            else:
                r = (np.log(_f(sigmas[i - 1])) - np.log(sigma)) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - float(np.expm1(-h)) * denoised_d
        old_denoised = denoised
        _report(callback, i, x, sigmas, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_sde(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                     callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
                     eta: float = 1.0, r: float = 0.5) -> torch.Tensor:
    """DPM-Solver++ (stochastic, 2 evaluations per step) as in k-diffusion `sample_dpmpp_sde` (Lu et al. 2022).

    k-diffusion draws the noise from a Brownian tree; any unit-Gaussian noise sampler
    gives the same distribution, and ours is seeded per image.
    """
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = _f(sigmas[i]), _f(sigmas[i + 1])
        denoised = model(x, _sigma_batch(sigmas[i], x), **extra_args)
        if sigma_next == 0:
            x = denoised
        else:
            x = _dpmpp_sde_step(model, x, denoised, sigma, sigma_next, eta, r, noise_sampler, extra_args)
        _report(callback, i, x, sigmas, denoised)
    return x


def _dpmpp_sde_step(model: Model, x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float,
                    eta: float, r: float, noise_sampler: NoiseSampler, extra_args: dict) -> torch.Tensor:
    t, t_next = -np.log(sigma), -np.log(sigma_next)
    h = t_next - t
    sigma_s = float(np.exp(-(t + h * r)))
    # first stage: ancestral DPM-Solver++(1) step to the intermediate level sigma_s
    sd, su = get_ancestral_step(sigma, sigma_s, eta)
    x_2 = (sd / sigma) * x - float(np.expm1(np.log(sd) - np.log(sigma))) * denoised
    x_2 = x_2 + noise_sampler(torch.tensor(sigma), torch.tensor(sigma_s)) * su
    denoised_2 = model(x_2, _sigma_batch(sigma_s, x), **extra_args)
    # second stage: full step using the mixed data estimate
    sd, su = get_ancestral_step(sigma, sigma_next, eta)
    fac = 1 / (2 * r)
    denoised_d = (1 - fac) * denoised + fac * denoised_2
    x = (sd / sigma) * x - float(np.expm1(np.log(sd) - np.log(sigma))) * denoised_d
    return x + noise_sampler(torch.tensor(sigma), torch.tensor(sigma_next)) * su


def _f(v: Any) -> float:
    return float(v)


def _sigma_batch(sigma: Any, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)


def _bcast(sigma: Any, x: torch.Tensor) -> torch.Tensor | float:
    if isinstance(sigma, torch.Tensor) and sigma.ndim > 0:
        return sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return float(sigma)


def _report(callback: Callback | None, i: int, x: torch.Tensor, sigmas: torch.Tensor, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigmas[i], "sigma_next": sigmas[i + 1], "denoised": denoised})
