"""A LoRA file read one module at a time.

`LoRASource` groups the file's keys by module from the safetensors header (no
tensor data read) and hands out one module's tensors on request through
`safe_open`, so the toolbox never holds more than the module it works on.
Files in another layout (PEFT `lora_A`/`lora_B`, older diffusers keys, `.pt`)
are small enough to convert in memory with `load_lora`, which checks them.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from library.errors import LoRAFileError
from library.lora import keys
from library.lora.file import read_header
from library.lora.loading import load_lora
from library.lora.naming import lora_architecture
from library.lora.tools import delta


class LoRASource:
    """Module names, metadata and per-module tensors of one LoRA file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._tensors: dict[str, torch.Tensor] | None = None
        self._file = None
        if self.path.suffix.lower() == ".safetensors":
            header = read_header(self.path)
            self.metadata = header.metadata
            grouped, other = delta.group_keys(header.entries)
            if grouped and not other:
                self._keys = grouped
                self._file = safe_open(str(self.path), framework="pt", device="cpu")
                return
        self._load_converted()

    def _load_converted(self) -> None:
        loaded = load_lora(self.path)  # raises a LoRAFileError naming unplaced keys
        self.metadata = dict(loaded.metadata)
        self._tensors = loaded.tensors
        self._keys, other = delta.group_keys(loaded.tensors)
        if other:  # never drop tensors silently (a DoRA magnitude would change the result)
            raise LoRAFileError(f"{self.label}: the toolbox has no formula for {len(other)} of its tensors",
                                other[:10] + ["known: " + ", ".join(delta.known_formats())])

    @property
    def label(self) -> str:
        return str(self.path)

    def modules(self) -> list[str]:
        return list(self._keys)

    def suffixes(self, name: str) -> list[str]:
        return list(self._keys[name])

    def parts(self, name: str) -> dict[str, torch.Tensor]:
        """One module's tensors by suffix, checked (pairing, rank, finite values)."""
        entry = self._keys.get(name)
        if entry is None:
            raise LoRAFileError(f"{self.label}: has no module {name}")
        if self._tensors is not None:
            parts = {suffix: self._tensors[key] for suffix, key in entry.items()}
        else:
            try:
                parts = {suffix: self._file.get_tensor(key) for suffix, key in entry.items()}
            except Exception as exc:  # safetensors raises its own error types for damaged data
                raise LoRAFileError(f"{self.label}: could not read {name} ({exc})") from exc
        self._check(name, parts)
        return parts

    def _check(self, name: str, parts: dict[str, torch.Tensor]) -> None:
        fmt = delta.format_of(parts, f"{self.label}: {name}")
        if fmt.problems is not None:
            problems = fmt.problems(name, parts)
        else:
            bad = [s for s, t in parts.items() if t.is_floating_point() and not torch.isfinite(t).all()]
            problems = [f"{name}: non-finite values (NaN/inf) in {', '.join(sorted(bad))}"] if bad else []
        if problems:
            raise LoRAFileError(f"{self.label}: the LoRA is damaged or inconsistent", problems)

    def items(self) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        for name in self._keys:
            yield name, self.parts(name)

    def close(self) -> None:
        self._file = None

    def __enter__(self) -> LoRASource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_conv3x3(shape: torch.Size | tuple[int, ...]) -> bool:
    """A weight (or LoRA down) shape of a k x k (k > 1) convolution: such modules take the conv rank."""
    return len(shape) == 4 and tuple(shape[2:]) != (1, 1)


def lora_family(lora: LoRASource) -> str:
    """The family its names were written for ("SDXL", "SD1.x", "SD2.x" or "SD1.x/SD2.x"), as the loader's
    refusals name it: te1/te2 or SGM UNet names are SDXL; a text-encoder width of 768/1024 is SD1.x/SD2.x."""
    name = next((n for n in lora.modules() if n.startswith("lora_te") and keys.DOWN in lora.suffixes(n)), None)
    down = lora.parts(name)[keys.DOWN] if name else None
    return lora_architecture(lora.modules(), int(down.shape[1]) if down is not None and down.dim() == 2 else None)
