"""`lorasmith lora extract --base BASE --tuned TUNED --dim N -o OUT`: a LoRA from two checkpoints.

Semantics of sd-scripts' networks/extract_lora_from_models.py: for each layer a
LoRA would target (sd-scripts' networks.lora targets; k x k convolutions too when
--conv_dim is given) the difference tuned - base is truncated by SVD to rank
--dim (--conv_dim), up = U_k diag(S_k), down = Vh_k (the best rank-k
approximation, Eckart & Young 1936), both clamped at the --clamp_quantile
quantile of their values, alpha = rank. The text encoder is kept only when some
weight differs by more than --min_diff (DreamBooth runs often leave it alone).
Both models are read one layer at a time.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from library.errors import LoRAFileError, ModelLoadError
from library.lora import keys
from library.lora.file import resolve_dtype, save_lora
from library.lora.metadata import base_model_version, modelspec_metadata
from library.lora.targets import find_targets
from library.lora.tools import svd
from library.lora.tools.lora_reader import is_conv3x3
from library.lora.tools.model_weights import ModelWeights, WeightEntry, open_model
from library.lora.tools.output import Progress, check_output, provenance, rank_problems
from library.models.configs import load_family_configs
from library.models.modules import build_component


@dataclass(frozen=True)
class ExtractOptions:
    dim: int = 4
    conv_dim: int | None = None
    clamp_quantile: float = 0.99
    min_diff: float = 0.01
    device: str | None = None
    save_precision: str | None = None
    no_metadata: bool = False

    def check(self) -> None:
        problems = rank_problems(dim=self.dim, conv_dim=self.conv_dim)
        if not 0 < self.clamp_quantile <= 1:
            problems.append(f"--clamp_quantile {self.clamp_quantile}: give a number in (0, 1] (1 = no clamping)")
        if self.min_diff < 0:
            problems.append(f"--min_diff {self.min_diff}: give 0 or more")
        if problems:
            raise LoRAFileError("extract options are not usable", problems)


@dataclass
class ExtractReport:
    text_encoder_kept: bool = False
    text_encoder_max_diff: float = 0.0
    fro_retained: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        te = "kept" if self.text_encoder_kept else "identical within --min_diff, left out"
        out = [f"text encoder: max |diff| {self.text_encoder_max_diff:.3g}, {te}"]
        out += [f"{name:<75} | fro retained {f:.1%}" for name, f in self.fro_retained.items()]
        mean = sum(self.fro_retained.values()) / max(1, len(self.fro_retained))
        out.append(f"average Frobenius retention: {mean:.2%} over {len(self.fro_retained)} modules")
        return out


def target_entries(weights: ModelWeights, conv: bool) -> list[WeightEntry]:
    """The weights sd-scripts' LoRA would adapt, text encoder first, found on a meta-device skeleton."""
    configs = load_family_configs(weights.family)
    unet = build_component("unet", configs["unet"], empty=True)
    text_encoder = build_component("text_encoder", configs["text_encoder"], empty=True)
    layers = weights.lora_entries()
    return [layers[t.name] for t in find_targets(unet, text_encoder, conv=conv) if t.name in layers]


def extract_module(diff: torch.Tensor, rank: int, clamp_quantile: float, device: str | None
                   ) -> tuple[dict[str, torch.Tensor], float]:
    """(Kohya tensors, retained Frobenius fraction) of the rank-k truncation of one difference."""
    matrix = svd.as_matrix(diff.float()).to(device or "cpu")
    rank = min(rank, *matrix.shape)
    u, s, vh = svd.svd(matrix)
    up, down = svd.clamp_factors(*svd.truncate(u, s, vh, rank), clamp_quantile)
    if diff.dim() == 4:
        up, down = up.reshape(diff.shape[0], rank, 1, 1), down.reshape(rank, *diff.shape[1:])
    parts = {keys.DOWN: down.cpu().contiguous(), keys.UP: up.cpu().contiguous(), keys.ALPHA: torch.tensor(float(rank))}
    return parts, svd.fro_retained(s, rank)


def _check_same_architecture(base: ModelWeights, tuned: ModelWeights) -> None:
    if base.family != tuned.family:
        raise ModelLoadError(
            f"base {base.label} and tuned {tuned.label} are different architectures "
            f"({base.family} with {len(base.entries)} tensors, {tuned.family} with {len(tuned.entries)})",
            ["extract needs the fine-tuned model and the very base it was trained from"])


def extract_metadata(out: Path, opts: ExtractOptions) -> dict[str, str]:
    """sd-scripts' minimum network metadata, plus modelspec unless no_metadata."""
    args = {"conv_dim": str(opts.conv_dim), "conv_alpha": str(float(opts.conv_dim))} if opts.conv_dim else {}
    md = {
        "ss_v2": "False",
        "ss_base_model_version": base_model_version(False, False),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(opts.dim),
        "ss_network_alpha": str(float(opts.dim)),
        "ss_network_args": json.dumps(args),
    }
    if not opts.no_metadata:
        md.update(modelspec_metadata(title=out.stem, resolution=512))
    return md


def extract_lora(base: str, tuned: str, out: str | os.PathLike[str], opts: ExtractOptions, *,
                 overwrite: bool = False, progress: Progress | None = None,
                 command: Sequence[str] | None = None) -> ExtractReport:
    """Write the LoRA that best approximates tuned - base at the given ranks."""
    opts.check()
    out_path = check_output(out, [base, tuned], overwrite=overwrite, error=LoRAFileError)
    if out_path.suffix.lower() != ".safetensors":
        raise LoRAFileError(f"{out_path}: LoRA files are written as .safetensors",
                            ["choose a name ending in .safetensors"])
    base_w, tuned_w = open_model(base), open_model(tuned)
    _check_same_architecture(base_w, tuned_w)
    tuned_entries = {(e.component, e.key): e for e in tuned_w.entries}
    targets = target_entries(base_w, conv=opts.conv_dim is not None)
    report, tensors, te_names = ExtractReport(), {}, []
    with torch.no_grad():
        for i, entry in enumerate(targets):
            diff = tuned_w.get(tuned_entries[(entry.component, entry.key)]).float() - base_w.get(entry).float()
            if entry.component == "text_encoder":
                report.text_encoder_max_diff = max(report.text_encoder_max_diff, float(diff.abs().max()))
                te_names.append(entry.lora_name)
            rank = opts.conv_dim if is_conv3x3(entry.shape) and opts.conv_dim else opts.dim
            parts, kept = extract_module(diff, rank, opts.clamp_quantile, opts.device)
            tensors.update({f"{entry.lora_name}.{s}": t for s, t in parts.items()})
            report.fro_retained[entry.lora_name] = kept
            if progress is not None:
                progress(i + 1, len(targets), entry.lora_name)
    report.text_encoder_kept = report.text_encoder_max_diff > opts.min_diff
    if not report.text_encoder_kept:
        for name in te_names:
            report.fro_retained.pop(name)
            for suffix in (keys.DOWN, keys.UP, keys.ALPHA):
                tensors.pop(f"{name}.{suffix}")
    md = extract_metadata(out_path, opts)
    md.update(provenance("extract", {"base": base, "tuned": tuned}, asdict(opts), command))
    save_lora(tensors, out_path, resolve_dtype(opts.save_precision) or torch.float32, md)
    return report
