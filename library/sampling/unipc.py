"""UniPC: unified predictor-corrector multistep sampler (Zhao et al. 2023, "UniPC").

Written on the data prediction D(x, sigma) in the x0 + sigma*eps parametrisation,
with lambda = -log sigma. In these coordinates the VP scaling alpha_t of the
paper cancels, so each update is ``x_t = (sigma_t/sigma_s) x - expm1(-h) m0 - B(h) sum(rho_k D_k)``.
Variant 'bh1' uses B(h) = -h, 'bh2' uses B(h) = expm1(-h) (paper, section 3.3).
Same shared signature as samplers.py.
"""
from __future__ import annotations

import math

import torch

from library.sampling.samplers import (
    Callback,
    Model,
    NoiseSampler,
    _report,
    _sigma_batch,
)


def _unipc_system(rks: list[float], hh: float, variant: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Vandermonde matrix R, right-hand side b and B(h) for the order len(rks) update (UniPC eq. 9)."""
    h_phi_k = math.expm1(hh) / hh - 1
    factorial = 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rows, b = [], []
    r = torch.tensor(rks, dtype=torch.float64)
    for k in range(1, len(rks) + 1):
        rows.append(r ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.tensor(b, dtype=torch.float64), b_h


def _differences(ms: list[torch.Tensor], lams: list[float], m0: torch.Tensor, lam0: float, h: float,
                 count: int) -> tuple[list[float], list[torch.Tensor]]:
    """Scaled differences D_k = (m_k - m0) / r_k against `count` older data predictions."""
    rks, d1s = [], []
    for k in range(1, count + 1):
        rk = (lams[-(k + 1)] - lam0) / h
        rks.append(rk)
        d1s.append((ms[-(k + 1)] - m0) / rk)
    return rks, d1s


def unipc_predict(ms: list[torch.Tensor], lams: list[float], x: torch.Tensor, sigma_s: float, sigma_t: float,
                  order: int, variant: str) -> torch.Tensor:
    """UniP: order-`order` predictor from sigma_s (newest entry of ms) to sigma_t."""
    m0, lam0 = ms[-1], lams[-1]
    lam_t = math.inf if sigma_t == 0 else -math.log(sigma_t)
    h = lam_t - lam0
    x_t = (sigma_t / sigma_s) * x - math.expm1(-h) * m0
    if order == 1:
        return x_t
    rks, d1s = _differences(ms, lams, m0, lam0, h, order - 1)
    r_mat, b, b_h = _unipc_system(rks + [1.0], -h, variant)
    rhos = [0.5] if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1]).tolist()
    return x_t - b_h * sum(rho * d for rho, d in zip(rhos, d1s))


def unipc_correct(ms: list[torch.Tensor], lams: list[float], model_t: torch.Tensor, last_x: torch.Tensor,
                  sigma_s: float, sigma_t: float, order: int, variant: str) -> torch.Tensor:
    """UniC: corrects the last step (sigma_s -> sigma_t) using the fresh prediction model_t at sigma_t."""
    m0, lam0 = ms[-1], lams[-1]
    h = -math.log(sigma_t) - lam0
    rks, d1s = _differences(ms, lams, m0, lam0, h, order - 1)
    r_mat, b, b_h = _unipc_system(rks + [1.0], -h, variant)
    rhos = [0.5] if order == 1 else torch.linalg.solve(r_mat, b).tolist()
    x_t = (sigma_t / sigma_s) * last_x - math.expm1(-h) * m0
    corr = sum((rho * d for rho, d in zip(rhos[:-1], d1s)), torch.zeros_like(m0))
    return x_t - b_h * (corr + rhos[-1] * (model_t - m0))


@torch.no_grad()
def sample_unipc(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
                 order: int = 3, variant: str = "bh1", lower_order_final: bool = True) -> torch.Tensor:
    """UniPC multistep with corrector after every step but the last (A1111 defaults: bh1, order 3)."""
    extra_args = extra_args or {}
    n = len(sigmas) - 1
    s = [float(v) for v in sigmas]
    ms: list[torch.Tensor] = []
    lams: list[float] = []
    last_x, last_order = None, 1
    for i in range(n):
        denoised = model(x, _sigma_batch(s[i], x), **extra_args)
        if last_x is not None:
            x = unipc_correct(ms, lams, denoised, last_x, s[i - 1], s[i], last_order, variant)
        ms, lams = (ms + [denoised])[-order:], (lams + [-math.log(s[i])])[-order:]
        cur_order = min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)
        if s[i + 1] == 0:  # h is infinite: only the first-order update is defined
            cur_order = 1
        last_x = x
        x = unipc_predict(ms, lams, x, s[i], s[i + 1], cur_order, variant)
        last_order = cur_order
        _report(callback, i, x, sigmas, denoised)
    return x
