"""Model hashes as the SD ecosystem writes them into LoRA metadata.

- `file_sha256`: the full SHA-256 of a file (A1111's "new" hash, sd-scripts'
  `ss_new_sd_model_hash`).
- `legacy_hash`: A1111's original short hash (sd-scripts' `ss_sd_model_hash`):
  SHA-256 of the 64 KiB starting at offset 1 MiB, first 8 hex digits. Cheap on
  multi-GB files, which is why it was used.
- `state_dict_sha256`: for models with no single file (diffusers folders, the
  built-in model), a hash over tensor names, dtypes, shapes and bytes.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import torch

_LEGACY_OFFSET = 0x100000
_LEGACY_LENGTH = 0x10000
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def legacy_hash(path: str | os.PathLike[str]) -> str:
    """A1111's old model hash: sha256 of bytes [1 MiB, 1 MiB + 64 KiB), first 8 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(_LEGACY_OFFSET)
        digest.update(fh.read(_LEGACY_LENGTH))
    return digest.hexdigest()[:8]


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hash of a state dict that does not depend on how it was stored on disk."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy
    return digest.hexdigest()
