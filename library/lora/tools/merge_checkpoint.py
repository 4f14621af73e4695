"""`lorasmith lora merge --pretrained_model_name_or_path BASE --lora FILE[:W] ... -o OUT`: LoRAs into a model.

Each adapted layer becomes W + sum_i w_i * delta_i (computed in float32, stored in
the base's precision unless --save_precision says otherwise), as sd-scripts'
merge_lora.py / sdxl_merge_lora.py do, for SD1.x, SD2.x and SDXL bases. The output is a
single-file `.safetensors`, streamed tensor by tensor (read one, add its deltas, write
it), or a diffusers folder when OUT is not a `.safetensors` name or `--save_as diffusers`.

A single-file base keeps its own layout: every tensor it holds is written under its own
name, in its own shape, untouched unless a LoRA changes it (EMA copies, SD2's 24th
OpenCLIP layer, `logit_scale`, `v_pred` markers included); an OpenCLIP q/k/v delta is
added to its third of the fused `in_proj_weight`. A built-in or a folder base is written
in the family's LDM / SGM layout (ldm_layout: UNet and VAE streamed, each text encoder
converted whole, one at a time). A LoRA with any module that matches no layer of the
base is refused, naming the LoRA, the base, both families and the counts: a merge never
silently drops part of a LoRA.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch

from library.errors import LoRAFileError, ModelLoadError
from library.fileio import atomic_write_text
from library.lora import keys
from library.lora.file import resolve_dtype
from library.lora.tools import delta
from library.lora.tools.lora_reader import LoRASource, lora_family
from library.lora.tools.merge import LoRAWeight
from library.lora.tools.model_weights import (
    ModelWeights,
    WeightEntry,
    entry_view,
    open_model,
    stored_with,
)
from library.lora.tools.output import (
    PROVENANCE_KEY,
    Progress,
    check_output,
    provenance,
    write_safetensors_streaming,
)
from library.models.configs import load_family_configs
from library.models.ldm_convert import to_ldm_tensor
from library.models.ldm_layout import slots, text_encoder_to_ldm

SAVE_AS = ("safetensors", "diffusers")
PROVENANCE_FILE = "lorasmith_tool.json"  # a diffusers folder has no file-level metadata; the record goes beside it
_SHOWN = 10


def _core_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """A 1x1 convolution and a Linear layer take the same LoRA: compare shapes without trailing 1x1."""
    shape = tuple(shape)
    return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape


def delta_shape(parts: dict[str, torch.Tensor], label: str, entry: WeightEntry, weights: ModelWeights
                ) -> tuple[int, ...]:
    """The shape of a module's delta, from the factor shapes when the format has factors."""
    if delta.module_factors(parts, label) is not None:
        return (int(parts[keys.UP].shape[0]), *parts[keys.DOWN].shape[1:])
    base = weights.get(entry) if delta.format_of(parts, label).needs_base else None
    return tuple(delta.module_delta(parts, label, shape=entry.shape, base_weight=base).shape)


def match_lora(lora: LoRASource, weights: ModelWeights) -> dict[str, WeightEntry]:
    """Module name -> base weight for every module of the LoRA, or a LoRAFileError naming both and the counts."""
    layers = weights.lora_entries()
    matched, problems = {}, []
    for name in lora.modules():
        entry = layers.get(name)
        if entry is None:
            problems.append(f"{name}: no such layer in the base model")
            continue
        shape = delta_shape(lora.parts(name), f"{lora.label}: {name}", entry, weights)
        if _core_shape(shape) != _core_shape(entry.shape):
            problems.append(f"{name}: LoRA delta {list(shape)}, base layer {list(entry.shape)}")
            continue
        matched[name] = entry
    if problems:
        total, n_keys = len(lora.modules()), sum(len(lora.suffixes(n)) for n in lora.modules())
        lora_arch = lora_family(lora)
        why = (f"this LoRA is for {lora_arch} and the model is {weights.display}" if lora_arch != weights.display
               else "the LoRA was made for another architecture")
        raise LoRAFileError(
            f"{lora.label}: only {len(matched)} of {total} LoRA modules ({n_keys} keys) match {weights.label} "
            f"({weights.family}, {len(layers)} adaptable layers); {why}",
            problems[:_SHOWN] + ([f"... and {len(problems) - _SHOWN} more"] if len(problems) > _SHOWN else []))
    return matched


def merged_weight(base: torch.Tensor, deltas: Sequence[torch.Tensor], label: str) -> torch.Tensor:
    """base + sum(deltas) in float32, back in the base's dtype; refuses NaN/inf."""
    total = base.float()
    for d in deltas:
        total = total + d.reshape(base.shape)
    if not torch.isfinite(total).all():
        raise LoRAFileError(f"merging puts NaN/inf into {label}; nothing was written",
                            ["lower the LoRA weights, or check the LoRA with lorasmith verify"])
    return total.to(base.dtype)


class _Merger:
    """The deltas of every LoRA, per base layer, computed on request."""

    def __init__(self, sources: Sequence[LoRASource], loras: Sequence[LoRAWeight], weights: ModelWeights) -> None:
        self.sources, self.loras = sources, loras
        self.by_layer: dict[str, list[tuple[int, str]]] = {}
        for i, src in enumerate(sources):
            for name, entry in match_lora(src, weights).items():
                self.by_layer.setdefault(entry.key + "@" + entry.component, []).append((i, name))

    def touches(self, entry: WeightEntry) -> bool:
        return entry.key + "@" + entry.component in self.by_layer

    def deltas(self, entry: WeightEntry, base: torch.Tensor) -> list[torch.Tensor]:
        found = self.by_layer.get(entry.key + "@" + entry.component, [])
        return [delta.module_delta(self.sources[i].parts(name), name, shape=entry.shape, base_weight=base)
                * self.loras[i].weight for i, name in found]


def output_kind(out: Path, save_as: str | None) -> str:
    if save_as is not None and save_as not in SAVE_AS:
        raise ModelLoadError(f"--save_as {save_as!r}: use one of {', '.join(SAVE_AS)}")
    if save_as == "safetensors" and out.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"{out}: single-file checkpoints are written as .safetensors",
                             ["give an output name ending in .safetensors"])
    return save_as or ("safetensors" if out.suffix.lower() == ".safetensors" else "diffusers")


def merge_into_checkpoint(base: str, loras: Sequence[LoRAWeight], out: str | os.PathLike[str], *,
                          save_precision: str | None = None, save_as: str | None = None, overwrite: bool = False,
                          progress: Progress | None = None, command: Sequence[str] | None = None) -> Path:
    """Merge `loras` at their weights into `base`; write a single file (streamed) or a diffusers folder."""
    if not loras:
        raise LoRAFileError("no LoRA to merge", ["give --lora FILE[:WEIGHT] at least once"])
    out_path = check_output(out, [base, *(lo.path for lo in loras)], overwrite=overwrite, error=LoRAFileError)
    kind = output_kind(out_path, save_as)
    dtype = resolve_dtype(save_precision)
    options = {"save_precision": save_precision, "save_as": kind, "weights": [lo.weight for lo in loras]}
    with ExitStack() as stack, torch.no_grad():
        weights = open_model(base)
        merger = _Merger([stack.enter_context(LoRASource(lo.path)) for lo in loras], loras, weights)
        # hashed only once the inputs are known to fit (hashing a 2 GB base takes a while)
        meta = provenance("merge", {"base": base, "loras": [lo.path for lo in loras]}, options, command)
        if kind == "safetensors":
            return _write_single_file(weights, merger, out_path, dtype, meta, progress)
        folder = _write_diffusers(base, weights, merger, out_path, dtype, progress)
    atomic_write_text(folder / PROVENANCE_FILE, json.dumps(json.loads(meta[PROVENANCE_KEY]), indent=2) + "\n")
    return folder


def _write_single_file(weights: ModelWeights, merger: _Merger, out: Path, dtype: torch.dtype | None,
                       meta: dict[str, str], progress: Progress | None) -> Path:
    layout = _same_layout if weights.file_store is not None else _family_layout
    specs, produce = layout(weights, merger)
    specs = [(name, dtype if dtype is not None and stored.is_floating_point else stored, shape)
             for name, stored, shape in specs]
    return write_safetensors_streaming(out, specs, produce, {"format": "pt", **meta}, progress)


Specs = list[tuple[str, torch.dtype, tuple[int, ...]]]


def _same_layout(weights: ModelWeights, merger: _Merger) -> tuple[Specs, Callable[[str], torch.Tensor]]:
    """Every tensor of the input file under its own name and shape; the ones a LoRA touches merged."""
    store = weights.file_store  # a single-file base (_write_single_file chose this layout for it)
    touched: dict[str, list[WeightEntry]] = {}
    for entry in weights.entries:
        if merger.touches(entry):
            touched.setdefault(entry.stored_name, []).append(entry)

    def produce(name: str) -> torch.Tensor:
        stored = store.get(name)
        if name not in touched:
            return stored
        changed = {}
        for entry in touched[name]:
            base = entry_view(entry, stored)
            changed[entry] = merged_weight(base, merger.deltas(entry, base), entry.lora_name or entry.key)
        return stored_with(stored, changed)

    return [(n, store.dtype(n), tuple(store.shape(n))) for n in store.names()], produce


def _family_layout(weights: ModelWeights, merger: _Merger) -> tuple[Specs, Callable[[str], torch.Tensor]]:
    """A built-in or folder base in its family's single-file layout (the converter's, ldm_layout)."""
    configs = load_family_configs(weights.family)
    image = {e.ldm_key: e for e in weights.entries if e.component in ("unet", "vae")}
    specs: Specs = [(e.ldm_key, e.dtype, tuple(to_ldm_tensor(e.ldm_key, torch.empty(e.shape, device="meta")).shape))
                    for e in image.values()]
    owner, converted = {}, {}
    for slot in slots(weights.architecture):
        shapes = {e.key: torch.empty(e.shape, dtype=e.dtype, device="meta")
                  for e in weights.component_entries(slot.component)}
        for name, t in text_encoder_to_ldm(slot, configs[slot.component], shapes).items():
            specs.append((name, t.dtype, tuple(t.shape)))
            owner[name] = slot

    def merged(entry: WeightEntry) -> torch.Tensor:
        tensor = weights.get(entry)
        deltas = merger.deltas(entry, tensor)
        return merged_weight(tensor, deltas, entry.lora_name or entry.key) if deltas else tensor

    def produce(name: str) -> torch.Tensor:
        if name in image:
            return to_ldm_tensor(name, merged(image[name]))
        slot = owner[name]
        if slot.component not in converted:  # one text encoder in memory at a time, released as it is written
            state = {e.key: merged(e) for e in weights.component_entries(slot.component)}
            converted[slot.component] = text_encoder_to_ldm(slot, configs[slot.component], state)
        return converted[slot.component].pop(name)

    return specs, produce


def _write_diffusers(base: str, weights: ModelWeights, merger: _Merger, out: Path, dtype: torch.dtype | None,
                     progress: Progress | None) -> Path:
    """A diffusers folder: the base loaded once in its stored precision, merged in place, saved."""
    from library.models.loading import load_model_bundle
    from library.models.saving import save_diffusers

    bundle = load_model_bundle(base, dtype=weights.stored_dtype)
    states = {c: m.state_dict() for c, m in bundle.components().items()}
    targets = [e for e in weights.entries if merger.touches(e)]
    for i, entry in enumerate(targets):
        param = states[entry.component][entry.key]
        param.copy_(merged_weight(param, merger.deltas(entry, param), entry.lora_name or entry.key))
        if progress is not None:
            progress(i + 1, len(targets), entry.key)
    return save_diffusers(bundle, out, dtype or weights.stored_dtype)
