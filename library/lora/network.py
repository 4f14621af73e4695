"""LoRANetwork: the set of adapters for one UNet + text encoder, in Kohya's layout.

The network's own state dict is exactly what a Kohya LoRA file holds. It can be
applied as wrappers (training; several networks at once, each with its own
multiplier) or merged into the base weights at a weight w and unmerged exactly.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from library.errors import LoRAFileError
from library.lora import keys
from library.lora.loading import LoadedLoRA, load_lora, match_modules
from library.lora.module import LoRAModule, attach, detach
from library.lora.targets import Target, find_targets


class LoRANetwork(nn.Module):
    """Adapters keyed by Kohya module name; text-encoder adapters first, as in sd-scripts."""

    def __init__(self, pairs: Iterable[tuple[Target, LoRAModule]], multiplier: float = 1.0) -> None:
        super().__init__()
        self._targets: dict[str, Target] = {}
        for target, adapter in pairs:
            self.add_module(adapter.lora_name, adapter)
            self._targets[adapter.lora_name] = target
        self.multiplier = float(multiplier)
        self.applied = False
        self.merged_weight: float | None = None
        self._originals: dict[str, torch.Tensor] = {}
        self._written: dict[str, torch.Tensor] = {}
        self.unmatched_keys: list[str] = []
        self.source: LoadedLoRA | None = None

    # -- construction ---------------------------------------------------------------
    @classmethod
    def create(
        cls,
        unet: nn.Module | None,
        text_encoder: nn.Module | None,
        *,
        rank: int = 4,
        alpha: float | None = 1.0,
        conv_dim: int | None = None,
        conv_alpha: float | None = None,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
        train_unet: bool = True,
        train_text_encoder: bool = True,
        multiplier: float = 1.0,
    ) -> LoRANetwork:
        """A fresh network (up weights zero) on sd-scripts' targets; conv_dim adds LoCon 3x3 convs."""
        if not train_unet and not train_text_encoder:
            raise ValueError("train_unet and train_text_encoder are both off: the LoRA would have no modules")
        alpha = 1.0 if alpha is None else alpha  # sd-scripts' default; 0 means alpha = rank
        conv_alpha = 1.0 if conv_alpha is None else conv_alpha
        targets = find_targets(
            unet if train_unet else None,
            text_encoder if train_text_encoder else None,
            conv=bool(conv_dim),
        )
        pairs = []
        for target in targets:
            r, a = (rank, alpha) if target.kind != "conv" else (conv_dim, conv_alpha)
            if not r:
                continue
            adapter = LoRAModule(
                target.name, target.layer, int(r), a, dropout=dropout, rank_dropout=rank_dropout,
                module_dropout=module_dropout, multiplier=multiplier,
            )
            pairs.append((target, adapter))
        return cls(pairs, multiplier)

    @classmethod
    def from_weights(
        cls,
        source: str | os.PathLike[str] | Mapping[str, torch.Tensor] | LoadedLoRA,
        unet: nn.Module | None,
        text_encoder: nn.Module | None,
        multiplier: float = 1.0,
        *,
        strict: bool = True,
        train_unet: bool = True,
        train_text_encoder: bool = True,
        dropout: float | None = None,
        rank_dropout: float | None = None,
        module_dropout: float | None = None,
    ) -> LoRANetwork:
        """A network shaped by a file (rank and alpha per module: sd-scripts' --dim_from_weights).

        train_unet / train_text_encoder False leave that part of the file out.
        """
        loaded = source if isinstance(source, LoadedLoRA) else load_lora(source)
        loaded = _only_components(loaded, train_unet, train_text_encoder)
        matched, unmatched = match_modules(loaded, unet, text_encoder, strict=strict)
        pairs = []
        for name, target in matched.items():
            parts = loaded.modules[name]
            adapter = LoRAModule(
                name, target.layer, int(parts[keys.DOWN].shape[0]), float(parts[keys.ALPHA]),
                dropout=dropout, rank_dropout=rank_dropout, module_dropout=module_dropout,
                multiplier=multiplier,
            )
            pairs.append((target, adapter))
        te_first = sorted(pairs, key=lambda p: p[0].component != "text_encoder")
        network = cls(te_first, multiplier)
        network.unmatched_keys = unmatched
        network.source = loaded
        network._load_matched(loaded.tensors)
        return network

    # -- weights -----------------------------------------------------------------------
    def load_weights(self, source: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> list[str]:
        """Load a LoRA (any supported layout) into this network; returns modules the file lacked.

        Every module in the file must exist here with the same shapes, else LoRAFileError
        (the fix for a rank difference is --dim_from_weights).
        """
        loaded = load_lora(source)
        own = dict(self.named_children())
        components = {t.component for t in self._targets.values()}
        loaded = _only_components(loaded, "unet" in components, "text_encoder" in components)
        problems = []
        for name, parts in loaded.modules.items():
            adapter = own.get(name)
            if adapter is None:
                problems.append(f"{name}: not a module of this network")
                continue
            for suffix in (keys.DOWN, keys.UP):
                want = tuple(adapter.get_parameter(suffix).shape)
                if tuple(parts[suffix].shape) != want:
                    problems.append(f"{name}.{suffix}: file has {tuple(parts[suffix].shape)}, network has {want}")
        if problems:
            raise LoRAFileError(
                f"{loaded.label}: {len(loaded.modules) - len(problems)} of {len(loaded.modules)} modules fit this "
                "network (different rank? use --dim_from_weights to take rank and alpha from the file)",
                problems[:20],
            )
        self._load_matched(loaded.tensors)
        return sorted(set(own) - set(loaded.modules))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Accepts Kohya, PEFT (`lora_A`/`lora_B`) or older diffusers keys; converts first."""
        loaded = load_lora(state_dict)
        return super().load_state_dict(loaded.tensors, strict=strict, assign=assign)

    def _load_matched(self, tensors: Mapping[str, torch.Tensor]) -> None:
        own = self.state_dict()
        picked = {}
        for key, value in tensors.items():
            if key in own:
                picked[key] = value.reshape(own[key].shape).to(own[key].dtype)
        super().load_state_dict(picked, strict=False)

    def save_weights(
        self, path: str | os.PathLike[str], dtype: torch.dtype | str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Path:
        """Kohya `.safetensors`, written atomically, with sshs hashes (see library.lora.file)."""
        from library.lora.file import save_lora

        return save_lora(self.state_dict(), path, dtype, metadata)

    # -- views ------------------------------------------------------------------------
    @property
    def adapters(self) -> list[LoRAModule]:
        return [m for m in self.children() if isinstance(m, LoRAModule)]

    @property
    def text_encoder_loras(self) -> list[LoRAModule]:
        return [a for a in self.adapters if self._targets[a.lora_name].component == "text_encoder"]

    @property
    def unet_loras(self) -> list[LoRAModule]:
        return [a for a in self.adapters if self._targets[a.lora_name].component == "unet"]

    def target(self, name: str) -> Target:
        return self._targets[name]

    # -- apply / merge ------------------------------------------------------------------
    def apply_to(self) -> LoRANetwork:
        """Wrap every target layer so its output includes this network's adapters."""
        for adapter in self.adapters:
            target = self._targets[adapter.lora_name]
            attach(target.root, target.path, adapter)
        self.applied = True
        return self

    def restore(self) -> None:
        """Undo apply_to (and merge_to): the model is as it was before this network."""
        if self.merged_weight is not None:
            self.unmerge()
        for adapter in self.adapters:
            target = self._targets[adapter.lora_name]
            detach(target.root, target.path, adapter)
        self.applied = False

    def set_multiplier(self, multiplier: float) -> None:
        if self.merged_weight is not None:
            raise ValueError("this LoRA is merged into the weights; unmerge() before changing its multiplier")
        self.multiplier = float(multiplier)
        for adapter in self.adapters:
            adapter.multiplier = self.multiplier

    @torch.no_grad()
    def merge_to(self, weight: float = 1.0) -> None:
        """Add weight * scale * up @ down into each base weight; refuses non-finite results."""
        if self.merged_weight is not None:
            raise ValueError(f"this LoRA is already merged at weight {self.merged_weight}; unmerge() first")
        new_weights: dict[str, torch.Tensor] = {}
        bad = []
        for adapter in self.adapters:
            base = self._targets[adapter.lora_name].layer.weight
            merged = (base.float() + adapter.delta_weight(weight).to(base.device)).to(base.dtype)
            if not torch.isfinite(merged).all():
                bad.append(adapter.lora_name)
            new_weights[adapter.lora_name] = merged
        if bad:
            raise LoRAFileError(
                f"merging this LoRA at weight {weight} would put NaN/inf into {len(bad)} layer(s); nothing was changed",
                bad[:10],
            )
        for adapter in self.adapters:
            base = self._targets[adapter.lora_name].layer.weight
            self._originals[adapter.lora_name] = base.detach().clone()
            base.copy_(new_weights[adapter.lora_name])
            self._written[adapter.lora_name] = new_weights[adapter.lora_name]
            adapter.enabled = False
        self.merged_weight = float(weight)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact base weights saved by merge_to."""
        if self.merged_weight is None:
            return
        changed = [n for n, w in self._written.items() if not torch.equal(self._targets[n].layer.weight, w)]
        if changed:
            raise ValueError(
                f"{len(changed)} merged layer(s) changed after this LoRA was merged (another LoRA merged on top?); "
                "unmerge the later one first"
            )
        for adapter in self.adapters:
            self._targets[adapter.lora_name].layer.weight.copy_(self._originals.pop(adapter.lora_name))
            adapter.enabled = True
        self._written.clear()
        self.merged_weight = None

    # -- training ------------------------------------------------------------------------
    def prepare_optimizer_params(
        self, text_encoder_lr: float | None, unet_lr: float | None, default_lr: float | None
    ) -> list[dict[str, Any]]:
        """Parameter groups in sd-scripts' order: text encoder, then UNet.

        A group's lr falls back to default_lr; a group whose lr is None or 0 is left out
        (sd-scripts does the same). Each group carries a `name` ("textencoder"/"unet"),
        which is what the lr/<name> TensorBoard tags use.
        """
        self.requires_grad_(True)
        groups = []
        for name, adapters, lr in (
            ("textencoder", self.text_encoder_loras, text_encoder_lr),
            ("unet", self.unet_loras, unet_lr),
        ):
            lr = default_lr if lr is None else lr
            params = [p for a in adapters for p in a.parameters()]
            if params and lr:
                groups.append({"params": params, "lr": float(lr), "name": name})
        return groups

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scale down adapters whose delta-weight norm exceeds max_norm (sd-scripts --scale_weight_norms).

        Returns (modules scaled, mean norm, max norm) after scaling, as device scalars: the
        training step runs this every step and must not wait for the GPU to read them.
        Adapters within the limit are multiplied by exactly 1.
        """
        if not self.adapters:
            zero = torch.zeros(())
            return zero, zero, zero
        norms = torch.stack([a.delta_weight(1.0).norm() for a in self.adapters])
        ratios = torch.where(norms > 0, (max_norm / norms).clamp(max=1.0), torch.ones_like(norms))
        factors = ratios.sqrt()
        for adapter, factor in zip(self.adapters, factors.unbind()):
            adapter.lora_up.weight.mul_(factor.to(adapter.lora_up.weight.dtype))
            adapter.lora_down.weight.mul_(factor.to(adapter.lora_down.weight.dtype))
        kept = norms * ratios
        return (ratios < 1.0).sum(), kept.mean(), kept.max()


def _only_components(loaded: LoadedLoRA, unet: bool, text_encoder: bool) -> LoadedLoRA:
    if unet and text_encoder:
        return loaded
    wanted = {"unet"} if unet else {"text_encoder"} if text_encoder else set()
    kept = {}
    for key, value in loaded.tensors.items():
        parts = keys.split_key(key)
        if parts is not None and keys.component_of(parts[0]) in wanted:
            kept[key] = value
    if not kept:
        raise LoRAFileError(f"{loaded.label}: has no {' or '.join(sorted(wanted)) or 'selected'} modules to train")
    return LoadedLoRA(kept, loaded.metadata, loaded.source_format, loaded.path)
