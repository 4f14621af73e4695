"""A base or fine-tuned model's weights, read one tensor at a time.

`open_model(source)` accepts everything `--pretrained_model_name_or_path` does: a
built-in name (`tiny`, `tiny-sdxl`, `tiny-sd2`...), a diffusers folder, or a single-file
checkpoint in the original LDM / SGM layout, of any family lorasmith loads (SD1.x, SD2.x,
SDXL; detected from the keys by library.models.architecture). It lists every weight of
the family's modules as a `WeightEntry` (component, module key, where the file stores it,
shape, dtype) from the file headers alone and reads a tensor only when asked (a
positioned read at the header's offsets), so a merge or an extraction holds one layer at
a time, not the model. Pickled `.ckpt`/`.bin` files cannot be read lazily; they are
loaded whole (code-free, as everywhere in lorasmith).

Where a single file stores a weight is the converter's own mapping (ldm_keys for UNet and
VAE, ldm_layout's text-encoder slots, openclip_convert.openclip_source for OpenCLIP): an
OpenCLIP q/k/v projection (SD2's text encoder, SDXL's second) is one third of a fused
`in_proj_weight`, and `text_projection` is stored transposed; `entry_view` cuts the
module's tensor out of the stored one and `stored_with` puts a changed one back.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from library.errors import LorasmithError, ModelLoadError
from library.lora.file import read_header
from library.lora.naming import Naming, model_architecture
from library.models.architecture import detect_diffusers, detect_ldm
from library.models.builtin import BUILTIN_MODELS, builtin_names
from library.models.checkpoint_io import read_state_dict
from library.models.configs import (
    ARCHITECTURE_CONFIGS,
    family_components,
    load_family_configs,
)
from library.models.family import ModelFamily, family_of
from library.models.folder import find_weights, is_diffusers_folder, read_json
from library.models.ldm_convert import from_ldm_tensor
from library.models.ldm_keys import LDM_PREFIXES, ldm_key_table
from library.models.ldm_layout import slots
from library.models.modules import build_component, expected_shapes
from library.models.openclip_convert import fuse_in_proj, openclip_source, split_in_proj
from library.models.single_file import match_config_family

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
_OLD_CLIP = tuple(LDM_PREFIXES["text_encoder"] + s for s in ("embeddings.", "encoder.", "final_layer_norm."))
_IMAGE = ("unet", "vae")


class _Store(Protocol):
    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> torch.dtype: ...
    def get(self, name: str) -> torch.Tensor: ...


class _SafetensorsStore:
    """Tensors of one .safetensors file, each read on demand with a plain positioned read.

    Not through safe_open's memory map: every page of a mapped file that has been
    read stays in the process's resident set until the file is closed, so a merge
    streamed through the map still ends up "holding" the whole input (measured: 1.31x
    the checkpoint's size vs. well under 1x with positioned reads).
    """

    def __init__(self, path: Path) -> None:
        try:
            header = read_header(path)
        except LorasmithError as exc:
            raise ModelLoadError(f"{path} is not a readable .safetensors file ({exc.summary})",
                                 [*exc.problems, "the file is probably truncated or damaged: download it again"]
                                 ) from exc
        self.path, self._start, self._entries = path, header.data_start, header.entries

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        dtype = _ST_DTYPES.get(self._entries[name]["dtype"])
        if dtype is None:
            raise ModelLoadError(f"{self.path}: {name} has dtype {self._entries[name]['dtype']}, which lorasmith "
                                 "cannot merge", ["convert the checkpoint to fp16/bf16/fp32 first"])
        return dtype

    def get(self, name: str) -> torch.Tensor:
        begin, end = self._entries[name]["data_offsets"]
        buffer = bytearray(end - begin)
        with open(self.path, "rb") as fh:
            fh.seek(self._start + begin)
            if fh.readinto(buffer) != len(buffer):
                raise ModelLoadError(f"{self.path}: {name} is cut short (truncated file)", ["download it again"])
        if not buffer:
            return torch.empty(self.shape(name), dtype=self.dtype(name))
        return torch.frombuffer(buffer, dtype=self.dtype(name)).reshape(self.shape(name))


class _DictStore:
    """Tensors already in memory (built-in models, pickled checkpoints)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._t = tensors

    def names(self) -> list[str]:
        return list(self._t)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._t[name].dtype

    def get(self, name: str) -> torch.Tensor:
        return self._t[name]


def _open_store(path: Path) -> _Store:
    if path.suffix.lower() == ".safetensors":
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}", ["check the path"])
        return _SafetensorsStore(path)
    return _DictStore(read_state_dict(path))



@dataclass(frozen=True)
class WeightEntry:
    """One weight of the model: its module key, and where and how its store keeps it."""

    component: str  # unet | vae | text_encoder | text_encoder_2
    key: str  # the module's state-dict key (diffusers / transformers)
    ldm_key: str  # the single-file name of the tensor holding it
    shape: tuple[int, ...]  # in the module's shape
    dtype: torch.dtype
    store: str  # which store holds it ("ldm" for a single file)
    stored_name: str  # its name in that store (an old SD1 file's CLIP names lack `text_model.`)
    part: int | None = None  # q/k/v index inside OpenCLIP's fused in_proj
    transposed: bool = False  # OpenCLIP's text_projection is stored as the Linear weight's transpose
    lora_name: str | None = None  # the Kohya module name a LoRA uses for it (None: VAE, biases, norms)


def entry_view(entry: WeightEntry, stored: torch.Tensor) -> torch.Tensor:
    """The module's tensor from the stored one (a third of in_proj, a transpose, a 1x1-conv matrix)."""
    if entry.part is not None:
        stored = split_in_proj(stored)[entry.part]
    if entry.transposed:
        stored = stored.t()
    return from_ldm_tensor(entry.ldm_key, stored) if entry.store == "ldm" else stored


def stored_with(stored: torch.Tensor, changed: dict[WeightEntry, torch.Tensor]) -> torch.Tensor:
    """The stored tensor with some module tensors replaced (in_proj re-fused), in the stored shape."""
    fused = [e for e in changed if e.part is not None]
    if fused:
        pieces = list(split_in_proj(stored))
        for entry in fused:
            pieces[entry.part] = changed[entry].reshape(pieces[entry.part].shape)
        return fuse_in_proj(*pieces)
    (entry, tensor), = changed.items()
    return (tensor.t() if entry.transposed else tensor).reshape(stored.shape)


class ModelWeights:
    """Every weight of an SD1.x, SD2.x or SDXL model, listed from headers and read lazily."""

    def __init__(self, label: str, family: str, architecture: str, entries: list[WeightEntry],
                 stores: dict[str, _Store], kind: str, prediction_type: str | None = None) -> None:
        self.label, self.family, self.architecture = label, family, architecture
        self.entries, self._stores, self.kind = entries, stores, kind
        self.prediction_type = prediction_type  # only when the source says it (v_pred key, scheduler config)

    @property
    def model_family(self) -> ModelFamily:
        return family_of(self.architecture)

    @property
    def display(self) -> str:
        """The family as LoRA refusals name it (SD1.x, SD2.x, SDXL)."""
        return model_architecture(skeleton(self.family)[0])

    @property
    def file_store(self) -> _Store | None:
        """The single file's own store (every tensor it holds, extras included), or None."""
        return self._stores.get("ldm")

    def get(self, entry: WeightEntry) -> torch.Tensor:
        """The tensor in the module's shape (q/k/v cut from in_proj, VAE attention 1x1 convs as matrices)."""
        return entry_view(entry, self._stores[entry.store].get(entry.stored_name))

    def lora_entries(self) -> dict[str, WeightEntry]:
        """Kohya module name -> weight entry, for every Linear/Conv2d weight of UNet and text encoders."""
        return {e.lora_name: e for e in self.entries if e.lora_name is not None}

    def component_entries(self, component: str) -> Iterator[WeightEntry]:
        return (e for e in self.entries if e.component == component)

    @property
    def stored_dtype(self) -> torch.dtype:
        """The dtype most UNet weights are stored in (the default output precision)."""
        dtypes = [e.dtype for e in self.entries if e.component == "unet" and e.dtype.is_floating_point]
        return max(set(dtypes), key=dtypes.count) if dtypes else torch.float32


@functools.lru_cache(maxsize=4)
def skeleton(family: str) -> tuple[torch.nn.Module, tuple[torch.nn.Module, ...]]:
    """UNet and text encoders of a config family on the meta device: layer names without weights."""
    configs = load_family_configs(family)
    unet = build_component("unet", configs["unet"], empty=True)
    encoders = tuple(build_component(c, configs[c], empty=True) for c in text_components(family))
    return unet, encoders


def text_components(family: str) -> tuple[str, ...]:
    return tuple(c for c in family_components(family) if c.startswith("text_encoder"))


def model_components(family: str) -> tuple[str, ...]:
    return tuple(c for c in family_components(family) if c != "scheduler")


def _lora_name(naming: Naming, family: str, component: str, key: str, shape: tuple[int, ...]) -> str | None:
    if component == "vae" or not key.endswith(".weight") or len(shape) not in (2, 4):
        return None
    path = key[: -len(".weight")]
    if component == "unet":
        return naming.unet(path)
    return naming.text_encoder(text_components(family).index(component), path)


def ldm_locations(architecture: str, family: str, component: str) -> dict[str, tuple[str, int | None, bool]]:
    """Module key -> (single-file name, in_proj part, transposed) for one component of a config family."""
    shapes = expected_shapes(family, component)
    if component in _IMAGE:
        table = ldm_key_table(component, load_family_configs(family)[component], list(shapes))
        return {k: (v, None, False) for k, v in table.items()}
    slot = next(s for s in slots(architecture) if s.component == component)
    if slot.style == "hf":
        return {k: (f"{slot.prefix}text_model.{k.removeprefix('text_model.')}", None, False) for k in shapes}
    out = {}
    for key in shapes:
        rest, part, transposed = openclip_source(key)
        out[key] = (slot.prefix + rest, part, transposed)
    return out


def _entries(architecture: str, family: str, component: str, stored: dict[str, str], store: _Store,
             store_key: str) -> list[WeightEntry]:
    """Entries for one component; `stored` maps each module key (or, for a single file, each LDM name)
    to its name in `store`."""
    unet, encoders = skeleton(family)
    naming = Naming(unet, list(encoders))
    shapes = expected_shapes(family, component)
    out = []
    for key, (ldm_key, part, transposed) in ldm_locations(architecture, family, component).items():
        name = stored[ldm_key if store_key == "ldm" else key]
        if store_key != "ldm":  # a module's own state: stored as the module holds it
            part, transposed = None, False
        out.append(WeightEntry(component, key, ldm_key, shapes[key], store.dtype(name), store_key, name, part,
                               transposed, _lora_name(naming, family, component, key, shapes[key])))
    return out


def open_model(source: str | os.PathLike[str]) -> ModelWeights:
    """Open a built-in name, diffusers folder or single-file checkpoint for lazy reading."""
    name = str(source)
    if name in BUILTIN_MODELS:
        return _open_builtin(name)
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelLoadError(f"base model not found: {path}", [
            f"give a built-in name ({', '.join(builtin_names())}), a diffusers folder, "
            "or a .safetensors/.ckpt file that exists"])
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise ModelLoadError(f"{path} is a folder but not a diffusers model folder",
                                 ["a diffusers folder has model_index.json and unet/, vae/, text_encoder/ subfolders"])
        return _open_folder(path)
    return _open_single_file(path)


def _open_builtin(name: str) -> ModelWeights:
    bundle = BUILTIN_MODELS[name](torch.float32)
    family, architecture = bundle.facts.config_family or "tiny", bundle.facts.architecture
    stores: dict[str, _Store] = {}
    entries = []
    for component, module in bundle.components().items():
        state = {k: v.detach() for k, v in module.state_dict().items()}
        stores[component] = _DictStore(state)
        entries += _entries(architecture, family, component, {k: k for k in state}, stores[component], component)
    return ModelWeights(name, family, architecture, entries, stores, "builtin", bundle.facts.prediction_type)


def _open_single_file(path: Path) -> ModelWeights:
    """A single file in its own layout; the family and config from detect_ldm / match_config_family."""
    store = _open_store(path)
    names = {(LDM_PREFIXES["text_encoder"] + "text_model." + n[len(LDM_PREFIXES["text_encoder"]):]
              if n.startswith(_OLD_CLIP) else n): n for n in store.names()}
    shapes = {k: tuple(store.shape(n)) for k, n in names.items()}
    detection = detect_ldm(path, shapes)
    prediction = detection.file_prediction_type
    family = match_config_family(path, detection.architecture, shapes,
                                 prediction or family_of(detection.architecture).default_prediction_type)
    entries = [e for c in model_components(family)
               for e in _entries(detection.architecture, family, c, names, store, "ldm")]
    return ModelWeights(str(path), family, detection.architecture, entries, {"ldm": store}, "single_file",
                        prediction)


def _folder_names(component: str, raw: list[str]) -> dict[str, str]:
    """Module key -> stored name (CLIPTextModel's keys lost `text_model.` in transformers 5; the
    projection model keeps it)."""
    if component == "text_encoder":
        return {n.removeprefix("text_model."): n for n in raw if not n.endswith("position_ids")}
    if component == "text_encoder_2":
        return {n if n.startswith(("text_model.", "text_projection.")) else "text_model." + n: n
                for n in raw if not n.endswith("position_ids")}
    return {n: n for n in raw}


def _open_folder(folder: Path) -> ModelWeights:
    configs = {c: read_json(folder / c / "config.json") if (folder / c / "config.json").is_file() else None
               for c in ("unet", "text_encoder", "text_encoder_2")}
    index = folder / "model_index.json"
    detection = detect_diffusers(folder, read_json(index) if index.is_file() else None, configs["unet"],
                                 configs["text_encoder"], configs["text_encoder_2"])
    scheduler = folder / "scheduler" / "scheduler_config.json"
    prediction = read_json(scheduler).get("prediction_type") if scheduler.is_file() else None
    stores: dict[str, _Store] = {}
    names: dict[str, dict[str, str]] = {}
    candidates = ARCHITECTURE_CONFIGS[detection.architecture]
    for component in model_components(candidates[0]):
        stores[component] = _open_store(find_weights(folder / component, component))
        names[component] = _folder_names(component, stores[component].names())
    for family in candidates:
        if all({k: stores[c].shape(n) for k, n in names[c].items()} == expected_shapes(family, c)
               for c in model_components(family)):
            entries = [e for c in model_components(family)
                       for e in _entries(detection.architecture, family, c, names[c], stores[c], c)]
            return ModelWeights(str(folder), family, detection.architecture, entries, stores, "diffusers", prediction)
    display = family_of(detection.architecture).display
    raise ModelLoadError(f"{folder}: a {display} folder whose weights match no shipped {display} configuration "
                         f"({', '.join(candidates)})", ["modified UNets are not supported by the toolbox"])


__all__ = ["ModelWeights", "WeightEntry", "entry_view", "open_model", "skeleton", "stored_with"]
