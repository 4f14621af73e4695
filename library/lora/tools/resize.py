"""`lorasmith lora resize IN OUT --new_rank N`: lower a LoRA's rank by SVD.

Semantics of sd-scripts' networks/resize_lora.py: each module's product
up @ down is truncated to its best rank-k approximation (Eckart & Young 1936),
up = U_k diag(S_k), down = Vh_k, and alpha = (old alpha / old rank) * k, so the
scale of the delta is unchanged. `--dynamic_method sv_ratio | sv_fro |
sv_cumulative` with `--dynamic_param` picks k per module (at most --new_rank);
`--new_conv_rank` applies to k x k (k > 1) convolutions, as its sd-scripts help text
says and as ranks are given in training (sd-scripts' code applies it to every 4-D
module, 1x1 projections included; the two differ only when both ranks are given). Every module's retained
Frobenius fraction ||A_k||_F / ||A||_F is reported. A module with more singular
directions than its old rank cannot gain any: k never exceeds the old rank.
Modules of another registered algorithm (LoHa, LoKr...) are re-factorised from
their delta into a standard LoRA module.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from library.errors import LoRAFileError
from library.lora import keys
from library.lora.file import resolve_dtype, save_lora
from library.lora.tools import delta, svd
from library.lora.tools.lora_reader import LoRASource, is_conv3x3
from library.lora.tools.output import Progress, check_output, provenance, rank_problems


@dataclass(frozen=True)
class ResizeOptions:
    new_rank: int = 4
    new_conv_rank: int | None = None  # None: same as new_rank
    dynamic_method: str | None = None
    dynamic_param: float | None = None
    save_precision: str | None = None  # None: float32, as sd-scripts
    device: str | None = None
    verbose: bool = False

    def check(self) -> None:
        problems = rank_problems(new_rank=self.new_rank, new_conv_rank=self.new_conv_rank)
        if self.dynamic_method is not None and self.dynamic_method not in svd.DYNAMIC_METHODS:
            problems.append(f"--dynamic_method {self.dynamic_method!r}: use one of {', '.join(svd.DYNAMIC_METHODS)}")
        if self.dynamic_method and self.dynamic_param is None:
            problems.append(f"--dynamic_method {self.dynamic_method} needs --dynamic_param (e.g. 0.9 for sv_fro)")
        if self.dynamic_param is not None and self.dynamic_param <= 0:
            problems.append(f"--dynamic_param {self.dynamic_param}: give a positive number")
        if problems:
            raise LoRAFileError("resize options are not usable", problems)


@dataclass(frozen=True)
class ModuleResize:
    name: str
    old_rank: int
    new_rank: int
    new_alpha: float
    fro_retained: float
    sum_retained: float
    max_ratio: float


@dataclass
class ResizeReport:
    path: str
    modules: list[ModuleResize] = field(default_factory=list)

    @property
    def mean_fro_retained(self) -> float:
        return sum(m.fro_retained for m in self.modules) / max(1, len(self.modules))

    def lines(self, verbose: bool = True) -> list[str]:
        """One line per module (retained Frobenius fraction; verbose adds sd-scripts' other columns), then the mean."""
        out = [f"{m.name:<75} | rank {m.old_rank} -> {m.new_rank}, alpha {m.new_alpha:g}, "
               f"fro retained {m.fro_retained:.1%}"
               + (f", sum(S) retained {m.sum_retained:.1%}, max(S) ratio {m.max_ratio:0.1f}" if verbose else "")
               for m in self.modules]
        out.append(f"average Frobenius retention: {self.mean_fro_retained:.2%} over {len(self.modules)} modules")
        return out


def _spectrum(parts: dict[str, torch.Tensor], label: str, device: str | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, tuple[int, ...], int]:
    """(U, S, Vh, scale, weight shape, old rank) of one module's unscaled delta."""
    factors = delta.module_factors(parts, label)
    if factors is not None:
        up, down, scale = factors
        u, s, vh = svd.product_svd(up.to(device or "cpu"), down.to(device or "cpu"))
        shape = (up.shape[0], *parts[keys.DOWN].shape[1:])
        return u, s, vh, scale, shape, int(down.shape[0])
    full = delta.module_delta(parts, label)
    u, s, vh = svd.svd(svd.as_matrix(full).to(device or "cpu"))
    return u, s, vh, 1.0, tuple(full.shape), delta.module_rank(parts, label)


def resize_module(name: str, parts: dict[str, torch.Tensor], opts: ResizeOptions
                  ) -> tuple[dict[str, torch.Tensor], ModuleResize]:
    """One module at its new rank as Kohya tensors (down, up, alpha) and what was kept."""
    u, s, vh, scale, shape, old_rank = _spectrum(parts, name, opts.device)
    max_rank = (opts.new_conv_rank or opts.new_rank) if is_conv3x3(shape) else opts.new_rank
    full_length = min(shape[0], int(torch.tensor(shape[1:]).prod()))
    cap = min(max_rank, old_rank or full_length)  # 0: the format has no rank (LoKr full matrix)
    rank = svd.choose_rank(s, cap, opts.dynamic_method, opts.dynamic_param, full_length)
    up, down = svd.truncate(u, s, vh, rank)
    new_alpha = float(scale * rank)
    if len(shape) == 4:
        up, down = up.reshape(shape[0], rank, 1, 1), down.reshape(rank, *shape[1:])
    tensors = {keys.DOWN: down.cpu().contiguous(), keys.UP: up.cpu().contiguous(), keys.ALPHA: torch.tensor(new_alpha)}
    report = ModuleResize(name, old_rank, rank, new_alpha, svd.fro_retained(s, rank), svd.sum_retained(s, rank),
                          svd.max_ratio(s, rank))
    return tensors, report


def resize_metadata(metadata: dict[str, str], opts: ResizeOptions, old_dim: int, new_alpha: float | None
                    ) -> dict[str, str]:
    """The input's metadata with sd-scripts' resize updates (comment, dim, alpha); sshs hashes are recomputed."""
    md = {k: v for k, v in metadata.items() if not k.startswith("sshs_")}
    comment = md.get("ss_training_comment", "")
    if not opts.dynamic_method:
        conv = opts.new_conv_rank if opts.new_conv_rank not in (None, opts.new_rank) else None
        conv_desc = f" (conv: {conv})" if conv else ""
        md["ss_training_comment"] = f"dimension is resized from {old_dim} to {opts.new_rank}{conv_desc}; {comment}"
        md["ss_network_dim"] = str(opts.new_rank)
        md["ss_network_alpha"] = str(new_alpha)
    else:
        md["ss_training_comment"] = (f"Dynamic resize with {opts.dynamic_method}: {opts.dynamic_param} "
                                     f"from {old_dim}; {comment}")
        md["ss_network_dim"] = "Dynamic"
        md["ss_network_alpha"] = "Dynamic"
    return md


def resize_lora(src: str | os.PathLike[str], out: str | os.PathLike[str], opts: ResizeOptions, *,
                overwrite: bool = False, progress: Progress | None = None,
                command: Sequence[str] | None = None) -> ResizeReport:
    """Resize every module of `src` and write `out` (atomically, with provenance metadata)."""
    opts.check()
    out_path = check_output(out, [src], overwrite=overwrite, error=LoRAFileError)
    save_dtype = resolve_dtype(opts.save_precision) or torch.float32
    report = ResizeReport(str(src))
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad(), LoRASource(src) as lora:
        names = lora.modules()
        for i, name in enumerate(names):
            new, info = resize_module(name, lora.parts(name), opts)
            tensors.update({f"{name}.{suffix}": t for suffix, t in new.items()})
            report.modules.append(info)
            if progress is not None:
                progress(i + 1, len(names), name)
        metadata = dict(lora.metadata)
    if not report.modules:
        raise LoRAFileError(f"{src}: holds no LoRA modules to resize")
    old_dim = max(m.old_rank for m in report.modules)
    md = resize_metadata(metadata, opts, old_dim, report.modules[-1].new_alpha)
    md.update(provenance("resize", {"lora": src}, asdict(opts), command))
    save_lora(tensors, out_path, save_dtype, md)
    return report
