"""Lazy package exports: `from library.models import load_model_bundle` imports torch only then.

A package `__init__` that imported its submodules eagerly made every
`lorasmith … --help` load torch, diffusers and transformers (seconds) just to
register a subcommand. Packages declare which submodule holds each public name
and resolve it on first use (PEP 562 module `__getattr__`).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` resolving `name` from `package.<exports[name]>` when first used."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    return __getattr__
