"""Loading a LoRA from a file or a state dict, and matching it to a model.

Every path into a network goes through `load_lora`: read (with header checks),
convert to Kohya keys, then check pairing, ranks and finiteness. `match_modules`
then pairs module names with layers of the given UNet/text encoder; a LoRA made for
another architecture matches few or none, and is refused with the count.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from library.errors import LoRAFileError
from library.lora import keys
from library.lora.algorithms.registry import algorithm_of, implied_out_numel
from library.lora.convert import to_kohya
from library.lora.file import read_tensors, structure_problems
from library.lora.naming import Naming, lora_architecture, model_architecture, text_encoder_list
from library.lora.targets import Target, all_layers


@dataclass
class LoadedLoRA:
    """A checked LoRA in Kohya layout (LoRA, LoHa or LoKr tensors per module); every module has alpha."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    source_format: str = "kohya"
    path: Path | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else "LoRA state dict"

    @property
    def modules(self) -> dict[str, dict[str, torch.Tensor]]:
        return keys.group_by_module(self.tensors)[0]


def load_lora(source: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> LoadedLoRA:
    """Read and check a LoRA; raises LoRAFileError listing every problem found."""
    if isinstance(source, LoadedLoRA):
        return source
    if isinstance(source, Mapping):
        raw, metadata, path = dict(source), {}, None
    else:
        path = Path(source)
        raw, metadata = read_tensors(path)
    label = str(path) if path is not None else "LoRA state dict"
    if not raw:
        raise LoRAFileError(f"{label}: holds no tensors")
    tensors, fmt, unplaced = to_kohya(raw, metadata)
    if unplaced:
        raise LoRAFileError(
            f"{label}: {len(unplaced)} of {len(raw)} keys are not LoRA keys in a known layout "
            "(Kohya lora_down/lora_up/alpha, LyCORIS hada_*/lokr_*/dora_scale, PEFT lora_A/lora_B, "
            "or diffusers .lora.down/.lora.up)",
            unplaced[:10],
        )
    problems = structure_problems(tensors)
    if problems:
        raise LoRAFileError(f"{label}: the LoRA is damaged or inconsistent", problems[:20])
    _fill_missing_alpha(tensors)
    return LoadedLoRA(tensors, metadata, fmt, path)


def _fill_missing_alpha(tensors: dict[str, torch.Tensor]) -> None:
    """Old Kohya files without alpha: alpha = rank (sd-scripts' rule; scale 1, as A1111 reads LyCORIS files)."""
    modules, _ = keys.group_by_module(tensors)
    for name, parts in modules.items():
        if keys.ALPHA not in parts:
            rank = algorithm_of(parts).parts_rank(parts)
            tensors[f"{name}.{keys.ALPHA}"] = torch.tensor(float(rank or 1))


def _shape_problem(name: str, parts: Mapping[str, torch.Tensor], target: Target) -> str | None:
    if keys.DOWN not in parts or keys.MID in parts:
        out, numel = implied_out_numel(parts)
        weight = target.layer.weight
        if out != weight.shape[0] or numel != weight.numel():
            return (f"{name}: its delta has {out} x {numel // max(out, 1)} elements, "
                    f"but the model layer is {tuple(weight.shape)}")
        return None
    down, up = parts[keys.DOWN], parts[keys.UP]
    layer = target.layer
    if isinstance(layer, nn.Linear):
        want_in, want_out = layer.in_features, layer.out_features
        ok_kernel = down.dim() == 2 or tuple(down.shape[2:]) == (1, 1)
    else:
        want_in, want_out = layer.in_channels, layer.out_channels
        kernel = tuple(layer.kernel_size)
        ok_kernel = tuple(down.shape[2:]) == kernel or (down.dim() == 2 and kernel == (1, 1))
    if down.shape[1] != want_in or up.shape[0] != want_out or not ok_kernel:
        return (
            f"{name}: LoRA maps {tuple(down.shape)} -> {tuple(up.shape)}, "
            f"but the model layer is {want_in} -> {want_out}"
        )
    return None


def to_model_names(loaded: LoadedLoRA, unet: nn.Module | None,
                   text_encoder: nn.Module | Sequence[nn.Module] | None) -> LoadedLoRA:
    """The LoRA with its module names in the model's scheme (library.lora.naming).

    For SDXL: diffusers-style UNet names (PEFT / diffusers files) become SGM names and a
    plain `lora_te_` (diffusers' `text_encoder.`) becomes `lora_te1_`. Other models: unchanged.
    """
    naming = Naming(unet, text_encoder_list(text_encoder))
    if not naming.sdxl:
        return loaded
    all_layers(unet, text_encoder, naming)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in loaded.tensors.items():
        parts = keys.split_key(key)
        renamed[f"{naming.canonical_name(parts[0])}.{parts[1]}" if parts else key] = value
    if renamed.keys() == loaded.tensors.keys():
        return loaded
    return LoadedLoRA(renamed, loaded.metadata, loaded.source_format, loaded.path)


def pair_modules(
    loaded: LoadedLoRA, unet: nn.Module | None, text_encoder: nn.Module | Sequence[nn.Module] | None
) -> tuple[dict[str, Target], list[str], list[str]]:
    """(name -> target for modules that fit, unmatched names, one problem line per unmatched).

    Names are compared in the model's scheme: pass a LoadedLoRA through `to_model_names` first
    to match diffusers-style names to an SDXL model.
    """
    layers = all_layers(unet, text_encoder)
    matched: dict[str, Target] = {}
    unmatched: list[str] = []
    problems: list[str] = []
    for name, parts in loaded.modules.items():
        target = layers.get(name)
        problem = None if target is not None else f"{name}: no such layer in this model"
        if problem is None:
            problem = _shape_problem(name, parts, target)
        if problem is None:
            matched[name] = target
        else:
            unmatched.append(name)
            problems.append(problem)
    return matched, sorted(unmatched), problems


def match_modules(
    loaded: LoadedLoRA, unet: nn.Module | None, text_encoder: nn.Module | Sequence[nn.Module] | None, *,
    strict: bool = True,
) -> tuple[dict[str, Target], list[str]]:
    """Pair the LoRA's modules with layers of the model.

    Returns (name -> target, unmatched names). With strict, any unmatched module is
    an error; without it, an error only when nothing matches.
    """
    original = loaded
    loaded = to_model_names(loaded, unet, text_encoder)
    matched, unmatched, problems = pair_modules(loaded, unet, text_encoder)
    total = len(loaded.modules)
    if unmatched and (strict or not matched):
        lora_arch, model_arch = architectures(original, unet)
        other = (f"this LoRA is for {lora_arch} and the model is {model_arch}; " if lora_arch != model_arch
                 else "it was probably made for another architecture; ")
        raise LoRAFileError(
            f"{loaded.label}: only {len(matched)} of {total} LoRA modules match this model; {other}"
            "use a base model of the LoRA's architecture",
            problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else []),
        )
    return matched, unmatched


def architectures(loaded: LoadedLoRA, unet: nn.Module | None) -> tuple[str, str]:
    """(the family the LoRA's names were written for, the model's family), for refusals."""
    modules = loaded.modules
    te_width = next((int(p[keys.DOWN].shape[1]) for n, p in modules.items()
                     if n.startswith("lora_te") and keys.DOWN in p and p[keys.DOWN].dim() == 2), None)
    return lora_architecture(list(modules), te_width), model_architecture(unet)
