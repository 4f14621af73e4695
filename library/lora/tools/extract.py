"""`lorasmith lora extract --base BASE --tuned TUNED --dim N -o OUT`: a LoRA from two checkpoints.

Semantics of sd-scripts' networks/extract_lora_from_models.py: for each layer a
LoRA would target (sd-scripts' networks.lora targets; k x k convolutions too when
--conv_dim is given) the difference tuned - base is truncated by SVD to rank
--dim (--conv_dim), up = U_k diag(S_k), down = Vh_k (the best rank-k
approximation, Eckart & Young 1936), both clamped at the --clamp_quantile
quantile of their values, alpha = rank. The text encoders are kept only when some
weight of one differs by more than --min_diff (DreamBooth runs often leave them alone).
Both models are read one layer at a time.

SD1.x, SD2.x and SDXL: the family is detected from each model (both must be the same);
the names are the trainer's (library.lora.naming: SD2 `lora_te_` over OpenCLIP in HF
layout, SDXL `lora_unet_` + SGM paths and `lora_te1_`/`lora_te2_`), and an OpenCLIP
q/k/v difference is cut from the fused in_proj by model_weights. sd-scripts' `--sdxl` and
`--v2` are accepted and checked against what was detected; `--v_parameterization` (or a
file that says it) writes v-prediction metadata, and SD2 defaults to it as sd-scripts'
extract does (its v_parameterization defaults to --v2).
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
from library.lora.metadata import modelspec_metadata
from library.lora.targets import find_targets
from library.lora.tools import svd
from library.lora.tools.lora_reader import is_conv3x3
from library.lora.tools.model_weights import (
    ModelWeights,
    WeightEntry,
    open_model,
    skeleton,
)
from library.lora.tools.output import Progress, check_output, provenance, rank_problems
from library.models.family import SD1, ModelFamily, family_of


@dataclass(frozen=True)
class ExtractOptions:
    dim: int = 4
    conv_dim: int | None = None
    clamp_quantile: float = 0.99
    min_diff: float = 0.01
    device: str | None = None
    save_precision: str | None = None
    no_metadata: bool = False
    sdxl: bool = False  # sd-scripts' flags: checked against the detected family, never needed
    v2: bool = False
    v_parameterization: bool = False

    def check(self) -> None:
        problems = rank_problems(dim=self.dim, conv_dim=self.conv_dim)
        if self.sdxl and self.v2:
            problems.append("--sdxl and --v2 were both given: a model is one or the other (both are detected; "
                            "leave them out)")
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
        out = [f"text encoder(s): max |diff| {self.text_encoder_max_diff:.3g}, {te}"]
        out += [f"{name:<75} | fro retained {f:.1%}" for name, f in self.fro_retained.items()]
        mean = sum(self.fro_retained.values()) / max(1, len(self.fro_retained))
        out.append(f"average Frobenius retention: {mean:.2%} over {len(self.fro_retained)} modules")
        return out


def target_entries(weights: ModelWeights, conv: bool) -> list[WeightEntry]:
    """The weights sd-scripts' LoRA would adapt, text encoders first, found on a meta-device skeleton."""
    unet, encoders = skeleton(weights.family)
    layers = weights.lora_entries()
    return [layers[t.name] for t in find_targets(unet, list(encoders), conv=conv) if t.name in layers]


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
    if base.architecture != tuned.architecture:
        raise ModelLoadError(
            f"base {base.label} is a {base.model_family.display} model and tuned {tuned.label} is a "
            f"{tuned.model_family.display} model",
            ["extract needs the fine-tuned model and the very base it was trained from, of the same family"])
    if base.family != tuned.family:
        raise ModelLoadError(
            f"base {base.label} and tuned {tuned.label} are different architectures "
            f"({base.family} with {len(base.entries)} tensors, {tuned.family} with {len(tuned.entries)})",
            ["extract needs the fine-tuned model and the very base it was trained from"])


def check_flags(weights: ModelWeights, opts: ExtractOptions) -> None:
    """sd-scripts' --sdxl / --v2 say what the model is; we detect it, and name a flag that disagrees."""
    for given, architecture, flag in ((opts.sdxl, "sdxl", "--sdxl"), (opts.v2, "sd2", "--v2")):
        if given and weights.architecture != architecture:
            raise ModelLoadError(f"{flag} was given but {weights.label} is a {weights.model_family.display} model "
                                 f"(not {family_of(architecture).display})",
                                 [f"drop {flag}: lorasmith detects the family from the weights"])


def prediction_type(weights: ModelWeights, opts: ExtractOptions) -> str:
    """--v_parameterization, else what the base says, else the family's default (SD2: v, as sd-scripts)."""
    if opts.v_parameterization:
        return "v_prediction"
    return weights.prediction_type or weights.model_family.default_prediction_type


def extract_metadata(out: Path, opts: ExtractOptions, family: ModelFamily = SD1,
                     prediction: str = "epsilon") -> dict[str, str]:
    """sd-scripts' minimum network metadata for the family, plus modelspec unless no_metadata."""
    args = {"conv_dim": str(opts.conv_dim), "conv_alpha": str(float(opts.conv_dim))} if opts.conv_dim else {}
    v_pred = prediction == "v_prediction"
    md = {
        "ss_v2": str(family.ss_v2),
        "ss_base_model_version": family.base_model_version(prediction),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(opts.dim),
        "ss_network_alpha": str(float(opts.dim)),
        "ss_network_args": json.dumps(args),
    }
    if not opts.no_metadata:
        resolution = 512 if family.name == "sd2" and not v_pred else family.default_resolution
        md.update(modelspec_metadata(title=out.stem, resolution=resolution, v2=family.ss_v2,
                                     v_parameterization=v_pred, family=family.name))
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
    check_flags(base_w, opts)
    tuned_entries = {(e.component, e.key): e for e in tuned_w.entries}
    targets = target_entries(base_w, conv=opts.conv_dim is not None)
    report, tensors, te_names = ExtractReport(), {}, []
    with torch.no_grad():
        for i, entry in enumerate(targets):
            diff = tuned_w.get(tuned_entries[(entry.component, entry.key)]).float() - base_w.get(entry).float()
            if entry.component.startswith("text_encoder"):
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
    md = extract_metadata(out_path, opts, base_w.model_family, prediction_type(base_w, opts))
    md.update(provenance("extract", {"base": base, "tuned": tuned}, asdict(opts), command))
    save_lora(tensors, out_path, resolve_dtype(opts.save_precision) or torch.float32, md)
    return report
