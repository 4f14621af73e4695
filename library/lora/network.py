"""LoRANetwork: the set of adapters for one UNet + text encoder, in Kohya's layout.

The network's own state dict is exactly what a Kohya / LyCORIS file holds. It can be
applied as wrappers (training; several networks at once, each with its own
multiplier) or merged into the base weights at a weight w and unmerged exactly.
Every algorithm (LoRA/LoCon, LoHa, LoKr, each optionally with DoRA) goes through the
same class: the adapters differ, the network does not (library.lora.adapter).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from library.errors import LoRAFileError
from library.lora import keys
from library.lora.adapter import Adapter
from library.lora.algorithms.registry import ALGORITHMS, adapter_from_parts, algorithm_of
from library.lora.loading import LoadedLoRA, load_lora, match_modules, to_model_names
from library.lora.module import attach, detach
from library.lora.targets import LYCORIS_EXTRA_UNET_LAYERS, Target, find_targets


class LoRANetwork(nn.Module):
    """Adapters keyed by Kohya module name; text-encoder adapters first, as in sd-scripts."""

    def __init__(self, pairs: Iterable[tuple[Target, Adapter]], multiplier: float = 1.0) -> None:
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
        self.loraplus: tuple[float | None, float | None] = (None, None)  # (unet, text encoder) ratios
        self.block_lr_weights: list[float] | None = None  # 25 UNet block lr factors (SDXL: 23), sd-scripts
        self.model_refs: tuple | None = None  # (unet, text encoder(s)) the names were made for; a tuple, not submodules

    # -- construction ---------------------------------------------------------------
    @classmethod
    def create(
        cls,
        unet: nn.Module | None,
        text_encoder: nn.Module | Sequence[nn.Module] | None,
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
        algo: str = "lora",
        algo_options: Mapping[str, Any] | None = None,
        dora_wd: bool = False,
        wd_on_output: bool = True,
        lycoris_targets: bool = False,
        block_ranks: Any = None,
    ) -> LoRANetwork:
        """A fresh network (its delta zero) on sd-scripts' targets; conv_dim adds LoCon 3x3 convs.

        `algo` is lora, loha or lokr (LyCORIS names), `algo_options` that algorithm's own
        arguments (factor, decompose_both, full_matrix, use_tucker); `dora_wd` adds DoRA.
        `lycoris_targets` adds what LyCORIS' "full" preset adapts beyond sd-scripts
        (conv_in, conv_out, the time embedding). `block_ranks(target, rank, alpha)` may
        override (rank, alpha) per target (block-wise dims, library.lora.blocks).
        """
        if not train_unet and not train_text_encoder:
            raise ValueError("train_unet and train_text_encoder are both off: the LoRA would have no modules")
        alpha = 1.0 if alpha is None else alpha  # sd-scripts' default; 0 means alpha = rank
        conv_alpha = 1.0 if conv_alpha is None else conv_alpha
        adapter_cls = ALGORITHMS[algo]
        options = {**(algo_options or {}), "dora": dora_wd, "dora_on_output": wd_on_output}
        targets = find_targets(
            unet if train_unet else None,
            text_encoder if train_text_encoder else None,
            conv=bool(conv_dim) or bool(getattr(block_ranks, "conv", False)),
            extra_unet_layers=LYCORIS_EXTRA_UNET_LAYERS if lycoris_targets else (),
        )
        pairs = []
        for target in targets:
            r, a = (rank, alpha) if target.kind != "conv" else (conv_dim, conv_alpha)
            if block_ranks is not None:
                r, a = block_ranks(target, r, a)
            if not r:
                continue
            adapter = adapter_cls(
                target.name, target.layer, int(r), a, dropout=dropout, rank_dropout=rank_dropout,
                module_dropout=module_dropout, multiplier=multiplier, **options,
            )
            pairs.append((target, adapter))
        network = cls(pairs, multiplier)
        network.model_refs = (unet, text_encoder)
        return network

    @classmethod
    def from_weights(
        cls,
        source: str | os.PathLike[str] | Mapping[str, torch.Tensor] | LoadedLoRA,
        unet: nn.Module | None,
        text_encoder: nn.Module | Sequence[nn.Module] | None,
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
        loaded = to_model_names(loaded, unet, text_encoder)  # the names `matched` uses
        pairs = []
        for name, target in matched.items():
            adapter = adapter_from_parts(
                name, target.layer, loaded.modules[name], dropout=dropout, rank_dropout=rank_dropout,
                module_dropout=module_dropout, multiplier=multiplier,
            )
            pairs.append((target, adapter))
        te_first = sorted(pairs, key=lambda p: p[0].component != "text_encoder")
        network = cls(te_first, multiplier)
        network.unmatched_keys = unmatched
        network.source = loaded
        network.model_refs = (unet, text_encoder)
        network._load_matched(loaded.tensors)
        return network

    # -- weights -----------------------------------------------------------------------
    def load_weights(self, source: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> list[str]:
        """Load a LoRA (any supported layout) into this network; returns modules the file lacked.

        Every module in the file must exist here with the same shapes, else LoRAFileError
        (the fix for a rank difference is --dim_from_weights).
        """
        loaded = load_lora(source)
        if self.model_refs is not None:
            loaded = to_model_names(loaded, *self.model_refs)
        own = dict(self.named_children())
        components = {t.component for t in self._targets.values()}
        loaded = _only_components(loaded, "unet" in components, "text_encoder" in components)
        problems = []
        for name, parts in loaded.modules.items():
            adapter = own.get(name)
            if adapter is None:
                problems.append(f"{name}: not a module of this network")
                continue
            problems += _fit_problems(name, parts, adapter)
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
    def adapters(self) -> list[Adapter]:
        return [m for m in self.children() if isinstance(m, Adapter)]

    @property
    def text_encoder_loras(self) -> list[Adapter]:
        return [a for a in self.adapters if self._targets[a.lora_name].component == "text_encoder"]

    @property
    def unet_loras(self) -> list[Adapter]:
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
        """Merge every adapter into its base weight at `weight` (W + weight * dW; DoRA: see
        library.lora.algorithms.dora); refuses non-finite results. The originals are kept,
        so unmerge restores them bit for bit."""
        if self.merged_weight is not None:
            raise ValueError(f"this LoRA is already merged at weight {self.merged_weight}; unmerge() first")
        new_weights: dict[str, torch.Tensor] = {}
        bad = []
        for adapter in self.adapters:
            base = self._targets[adapter.lora_name].layer.weight
            merged = adapter.merged_weight(base.float(), weight).to(base.dtype)
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
        self, text_encoder_lr: float | None, unet_lr: float | None, default_lr: float | None,
        text_encoder_2_lr: float | None = None,
    ) -> list[dict[str, Any]]:
        """Parameter groups in sd-scripts' order: text encoder, then UNet.

        A group's lr falls back to default_lr; a group whose lr is None or 0 is left out
        (sd-scripts does the same). Each group carries a `name` ("textencoder"/"unet"),
        which is what the lr/<name> TensorBoard tags use. With LoRA+ (`self.loraplus`)
        the up matrices go to a "<name> plus" group at ratio x lr; with block learning
        rates (`self.block_lr_weights`) the UNet splits into "unet_<block>" groups, as in
        sd-scripts' networks/lora.py. SDXL: both encoders share the "textencoder" group
        (sd-scripts' networks.lora) unless `text_encoder_2_lr` differs; then they are
        "textencoder 1" and "textencoder 2" (sd-scripts' multi-encoder networks' names).
        """
        self.requires_grad_(True)
        unet_ratio, te_ratio = self.loraplus
        lr_te = default_lr if text_encoder_lr is None else text_encoder_lr
        lr_unet = default_lr if unet_lr is None else unet_lr
        te2 = [a for a in self.text_encoder_loras if a.lora_name.startswith("lora_te2_")]
        if text_encoder_2_lr is None or text_encoder_2_lr == lr_te or not te2:
            groups = _groups("textencoder", self.text_encoder_loras, lr_te, te_ratio)
        else:
            te1 = [a for a in self.text_encoder_loras if not a.lora_name.startswith("lora_te2_")]
            groups = (_groups("textencoder 1", te1, lr_te, te_ratio)
                      + _groups("textencoder 2", te2, text_encoder_2_lr, te_ratio))
        if self.block_lr_weights is None:
            return groups + _groups("unet", self.unet_loras, lr_unet, unet_ratio)
        from library.lora.blocks import block_index, is_sdxl_names

        sdxl = is_sdxl_names(a.lora_name for a in self.unet_loras)
        by_block: dict[int, list[Adapter]] = {}
        for adapter in self.unet_loras:
            by_block.setdefault(block_index(adapter.lora_name, sdxl), []).append(adapter)
        for idx, adapters in by_block.items():
            factor = self.block_lr_weights[idx] if idx >= 0 else 1.0
            groups += _groups(f"unet_{idx}", adapters, None if lr_unet is None else lr_unet * factor, unet_ratio)
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
        norms = torch.stack([a.plain_delta().norm() for a in self.adapters])
        ratios = torch.where(norms > 0, (max_norm / norms).clamp(max=1.0), torch.ones_like(norms))
        for adapter, ratio in zip(self.adapters, ratios.unbind()):
            factors = list(adapter.tensors().values())  # the product is linear in each of them
            for factor in factors:
                factor.mul_(ratio.pow(1.0 / len(factors)).to(factor.dtype))
        kept = norms * ratios
        return (ratios < 1.0).sum(), kept.mean(), kept.max()


def _groups(name: str, adapters: list[Adapter], lr: float | None, plus_ratio: float | None) -> list[dict[str, Any]]:
    """One optimizer group (two with LoRA+: up matrices at plus_ratio x lr, Hayou et al. 2024)."""
    plus = {id(p) for a in adapters for p in a.plus_parameters()} if plus_ratio is not None else set()
    params = [p for a in adapters for p in a.parameters()]
    out = []
    for group_name, members, group_lr in (
        (name, [p for p in params if id(p) not in plus], lr),
        (f"{name} plus", [p for p in params if id(p) in plus], None if lr is None else lr * (plus_ratio or 1.0)),
    ):
        if members and group_lr:
            out.append({"params": members, "lr": float(group_lr), "name": group_name})
    return out


def _fit_problems(name: str, parts: Mapping[str, torch.Tensor], adapter: Adapter) -> list[str]:
    """Why a file module cannot be loaded into an existing adapter (other algorithm or shapes)."""
    if algorithm_of(parts) is not type(adapter):
        return [f"{name}: file module is {algorithm_of(parts).ALGO}, network module is {adapter.ALGO}"]
    own = adapter.state_dict()
    problems = [f"{name}.{k}: not in this network's module" for k in parts if k != keys.ALPHA and k not in own]
    problems += [f"{name}.{k}: missing from the file" for k in own if k != keys.ALPHA and k not in parts]
    for key, value in parts.items():
        if key in own and key != keys.ALPHA and tuple(value.shape) != tuple(own[key].shape):
            problems.append(f"{name}.{key}: file has {tuple(value.shape)}, network has {tuple(own[key].shape)}")
    return problems


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
