"""Low-rank math for the toolbox, as pure functions on 2-D matrices.

A layer's delta is handled as a matrix [out, in * kh * kw]; `as_matrix` and
`as_weight` convert. The best rank-k approximation in Frobenius (and spectral)
norm is the truncated SVD (Eckart & Young 1936, "The approximation of one matrix
by another of lower rank"); every resize, SVD merge and extraction here is that
truncation, split as up = U_k diag(S_k), down = Vh_k like sd-scripts.
"""
from __future__ import annotations

import torch

MIN_SV = 1e-6  # sd-scripts resize_lora.py: a module whose largest singular value is below this is zero
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """[out, in] or [out, in, kh, kw] -> [out, in * kh * kw]."""
    return weight.reshape(weight.shape[0], -1)


def as_weight(matrix: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    return matrix.reshape(shape)


def svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in float32 (U [m, p], S [p], Vh [p, n], p = min(m, n))."""
    return torch.linalg.svd(matrix.float(), full_matrices=False)


def product_svd(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SVD of up @ down ([m, r] @ [r, n]) without forming it: QR of both factors, SVD of an r x r core.

    up = Qu Ru and down^T = Qd Rd give up @ down = Qu (Ru Rd^T) Qd^T, so the singular
    values are those of the small core and the vectors are rotated by Qu and Qd.
    Exact (to rounding) and linear in m and n, where a full SVD is cubic.
    """
    qu, ru = torch.linalg.qr(up.float())
    qd, rd = torch.linalg.qr(down.float().T)
    uc, s, vhc = torch.linalg.svd(ru @ rd.T)
    return qu @ uc, s, vhc @ qd.T


def truncate(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) = (U_k diag(S_k), Vh_k): the best rank-k factors (Eckart-Young)."""
    return u[:, :rank] * s[:rank], vh[:rank]


def _padded(s: torch.Tensor, length: int) -> torch.Tensor:
    """Singular values padded with zeros to `length` (what a full SVD of the matrix returns)."""
    return torch.cat([s, s.new_zeros(max(0, length - s.numel()))])


def _index_sv_cumulative(s: torch.Tensor, target: float) -> int:
    cumulative = torch.cumsum(s, dim=0) / float(torch.sum(s))
    index = int(torch.searchsorted(cumulative, torch.tensor(target, dtype=cumulative.dtype))) + 1
    return max(1, min(index, len(s) - 1))


def _index_sv_fro(s: torch.Tensor, target: float) -> int:
    squared = s.pow(2)
    cumulative = torch.cumsum(squared, dim=0) / float(torch.sum(squared))
    index = int(torch.searchsorted(cumulative, torch.tensor(target ** 2, dtype=cumulative.dtype))) + 1
    return max(1, min(index, len(s) - 1))


def _index_sv_ratio(s: torch.Tensor, target: float) -> int:
    index = int(torch.sum(s > s[0] / target).item())
    return max(1, min(index, len(s) - 1))


_INDEX = {"sv_ratio": _index_sv_ratio, "sv_fro": _index_sv_fro, "sv_cumulative": _index_sv_cumulative}


def choose_rank(s: torch.Tensor, max_rank: int, method: str | None = None, param: float | None = None,
                full_length: int | None = None) -> int:
    """The new rank as sd-scripts' resize_lora.py `rank_resize` picks it.

    Without a method: `max_rank`. sv_ratio keeps singular values above S[0] / param;
    sv_fro the fewest whose Frobenius fraction reaches param; sv_cumulative the fewest
    whose sum fraction reaches param (each at least 1, at most `max_rank`). A zero
    matrix (S[0] <= 1e-6) gets rank 1. `full_length` pads `s` with the zeros a full
    SVD of the matrix would return, so the result equals sd-scripts' on the full matrix.
    """
    s = _padded(s.float(), full_length or s.numel())
    if method is None:
        rank = max_rank
    elif method in _INDEX:
        rank = _INDEX[method](s, float(param)) + 1
    else:
        raise ValueError(f"dynamic_method {method!r} is not one of {', '.join(DYNAMIC_METHODS)}")
    if float(s[0]) <= MIN_SV:
        return 1
    return min(rank, max_rank)


def fro_retained(s: torch.Tensor, rank: int) -> float:
    """||A_k||_F / ||A||_F: the fraction of the Frobenius norm the rank-k truncation keeps."""
    total = float(torch.sqrt(torch.sum(s.float() ** 2)))
    return float(torch.sqrt(torch.sum(s.float()[:rank] ** 2))) / total if total > 0 else 1.0


def sum_retained(s: torch.Tensor, rank: int) -> float:
    total = float(torch.sum(s.abs()))
    return float(torch.sum(s[:rank].abs())) / total if total > 0 else 1.0


def max_ratio(s: torch.Tensor, rank: int) -> float:
    """S[0] / S[k-1], sd-scripts' `max(S) ratio` column (inf for a zero tail)."""
    last = float(s[rank - 1]) if rank - 1 < s.numel() else 0.0
    return float(s[0]) / last if last > 0 else float("inf")


def clamp_factors(up: torch.Tensor, down: torch.Tensor, quantile: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """sd-scripts' outlier clamp: both factors into [-q, q], q the `quantile` of their joined values.

    A quantile of None or >= 1 leaves the factors untouched (the exact truncation).
    """
    if quantile is None or quantile >= 1:
        return up, down
    values = torch.cat([up.flatten(), down.flatten()]).float()
    if values.numel() > 16_000_000:  # torch.quantile's input limit; a strided sample is as good here
        values = values[:: values.numel() // 16_000_000 + 1]
    hi = float(torch.quantile(values, quantile))
    return up.clamp(-hi, hi), down.clamp(-hi, hi)
