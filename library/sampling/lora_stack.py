"""LoRAs applied to a loaded model for sampling, changed without touching base weights.

`LoraStack.activate([(path, weight), ...])` wraps the model's layers with the wanted
networks (library.lora.LoRANetwork.apply_to) and unwraps the others, so the base
weights in memory and on disk never change. A LoRA at weight 0 is not applied at all,
which makes its image exactly the base model's. When one file replaces another of the
same shape (epochs of one run, as in a grid), the loaded network only gets the new
adapter weights instead of being rebuilt.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from library.errors import LoRAFileError, SamplingError
from library.lora import LoRANetwork
from library.sampling.prompt_files import file_in_folder, names_in_folder

LORA_SUFFIXES = (".safetensors",)


def resolve_lora(name: str, lora_dir: str | os.PathLike[str] | None) -> Path:
    """A `<lora:NAME>` tag's file: NAME.safetensors inside lora_dir, subfolders allowed, never outside it.

    Absolute names and `..` are refused like a missing file, with the same text (see prompt_files).
    """
    if lora_dir is None:
        raise SamplingError(f"prompt uses <lora:{name}> but no LoRA folder was given",
                            ["pass --lora_dir FOLDER holding NAME.safetensors"])
    path = file_in_folder(lora_dir, name, LORA_SUFFIXES[0])
    if path is None:
        raise SamplingError(f"<lora:{name}>: no {name}.safetensors in {lora_dir}", [
            "a tag names a .safetensors file inside --lora_dir (subfolders allowed; no absolute paths or '..')",
            f"LoRAs there: {names_in_folder(lora_dir, LORA_SUFFIXES[0])}"])
    return path


def resolve_named_file(tag: str, name: str, folder: str | os.PathLike[str] | None,
                       suffixes: tuple[str, ...], flag: str) -> Path:
    """A `<tag:NAME>` prompt tag's file (a `<checkpoint:…>`): NAME (+ a suffix) inside `folder`, never outside.

    Same rule and same message for "missing" and "not allowed" as `<lora:…>` (see prompt_files).
    """
    if folder is None:
        raise SamplingError(f"prompt uses <{tag}:{name}> but no folder for it was given",
                            [f"pass {flag} FOLDER holding {name}{suffixes[0]}"])
    for suffix in suffixes:
        path = file_in_folder(folder, name, suffix)
        if path is not None:
            return path
    known = ", ".join(n for n in (names_in_folder(folder, s) for s in suffixes) if n != "none") or "none"
    raise SamplingError(f"<{tag}:{name}>: no such file in {folder}", [
        f"a tag names a file inside {flag} (subfolders allowed; no absolute paths or '..')",
        f"{tag} files there: {known}"])


@lru_cache(maxsize=256)
def _short_hash(path: str, mtime_ns: int) -> str:
    from library.lora.file import data_region_sha256

    return data_region_sha256(path)[:12]


def lora_short_hash(path: str | os.PathLike[str]) -> str:
    """A1111's LoRA short hash: first 12 hex digits of the SHA-256 of the tensor data (sshs_model_hash)."""
    p = Path(path)
    return _short_hash(str(p.resolve()), p.stat().st_mtime_ns)


class LoraStack:
    """The LoRAs currently applied to one bundle's UNet and text encoder."""

    @classmethod
    def for_bundle(cls, bundle) -> LoraStack:
        """A stack over every module a LoRA of this model may touch (SDXL: both text encoders)."""
        encoders = bundle.text_encoders() if getattr(bundle, "text_encoder_2", None) is not None else bundle.text_encoder
        return cls(bundle.unet, encoders)

    def __init__(self, unet, text_encoder) -> None:
        self.unet = unet
        self.text_encoder = text_encoder
        self.active: dict[Path, tuple[LoRANetwork, float]] = {}
        self.swaps = 0  # how often a network was reused by loading new weights (for tests and benches)

    def activate(self, loras: Sequence[tuple[str | os.PathLike[str], float]]) -> bool:
        """Make exactly `loras` active; returns True when the text encoder's output may have changed."""
        wanted: dict[Path, float] = {}
        for path, weight in loras:
            if float(weight) != 0.0:
                key = Path(path).resolve()
                wanted[key] = wanted.get(key, 0.0) + float(weight)
        leaving = [p for p in self.active if p not in wanted]
        te_changed = False
        spare: list[LoRANetwork] = []
        for path in leaving:
            net, _ = self.active.pop(path)
            te_changed |= bool(net.text_encoder_loras)
            spare.append(net)
        for path, weight in wanted.items():
            if path in self.active:
                net, old = self.active[path]
                if old != weight:
                    net.set_multiplier(weight)
                    te_changed |= bool(net.text_encoder_loras)
            else:
                net = self._reuse(spare, path) or self._load(path)
                net.set_multiplier(weight)
                te_changed |= bool(net.text_encoder_loras)
            self.active[path] = (net, weight)
        for net in spare:
            net.restore()
        return te_changed

    def clear(self) -> bool:
        return self.activate([])

    def _reuse(self, spare: list[LoRANetwork], path: Path) -> LoRANetwork | None:
        """Load `path` into an already-applied network of the same shape, if one is being dropped."""
        for net in spare:
            try:
                missing = net.load_weights(path)
            except LoRAFileError:
                continue
            if missing:  # the new file lacks modules this network has: rebuild instead
                continue
            spare.remove(net)
            self.swaps += 1
            return net
        return None

    def _load(self, path: Path) -> LoRANetwork:
        net = LoRANetwork.from_weights(path, self.unet, self.text_encoder, multiplier=1.0)
        net.to(device=next(self.unet.parameters()).device)
        net.requires_grad_(False)
        net.eval()
        return net.apply_to()
