"""What is in a LoRA file, in a user's words: `lorasmith inspect` and `lorasmith verify`.

`inspect_lora` returns a JSON-able report (format, counts, rank/alpha, dtypes,
training settings from the metadata, tag frequency, per-block norms and, with a
base model, which keys match nothing and which base layers carry no LoRA).
`verify_lora` checks the file's integrity and returns one line per problem.
"""
from __future__ import annotations

import datetime
import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch

from library.errors import LorasmithError
from library.lora import keys
from library.lora.convert import to_kohya
from library.lora.file import data_region_sha256, precalculate_hashes, read_header, read_tensors, structure_problems
from library.lora.loading import LoadedLoRA, load_lora, pair_modules, to_model_names
from library.lora.algorithms.dora import DORA_KEY
from library.lora.algorithms.registry import algorithm_of, parts_product, parts_scale
from library.lora.blocks import block_index, block_label
from library.lora.targets import find_targets


def _delta_norm(parts: dict[str, torch.Tensor]) -> float:
    """Frobenius norm of scale * product (up @ down for LoRA): how strongly a module changes its layer.

    For DoRA modules this is the low-rank direction change before renormalisation (no base needed).
    """
    return float((parts_product(parts) * parts_scale(parts)).norm())


def _rank(parts: dict[str, torch.Tensor]) -> int:
    return algorithm_of(parts).parts_rank(parts) or 0


def _is_conv(parts: dict[str, torch.Tensor]) -> bool:
    """A kxk convolution module (LoHa/LoKr store non-Tucker conv factors flat: counted by their product)."""
    down = parts.get(keys.DOWN)
    if down is not None and keys.MID not in parts:
        return down.dim() == 4 and tuple(down.shape[2:]) != (1, 1)
    product = parts_product(parts)
    return product.dim() == 4 and tuple(product.shape[2:]) != (1, 1)


def _most_common(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0] if values else None


_BLOCK_ORDER = ("te_layer", "te_other", "down_blocks", "mid_block", "up_blocks", "unet_other")


def _block_order(block: str) -> tuple[int, int]:
    """Text encoder layers, then the UNet from input to output."""
    stem, _, index = block.rpartition("_") if block[-1:].isdigit() else (block, "", "0")
    rank = _BLOCK_ORDER.index(stem) if stem in _BLOCK_ORDER else len(_BLOCK_ORDER)
    return rank, int(index or 0)


def _sd_block(name: str) -> str:
    """sd-scripts' block of a module (IN00..IN11, MID, OUT00..OUT11), TE for the text encoder."""
    return "TE" if keys.component_of(name) == "text_encoder" else block_label(block_index(name))


def _sd_block_order(block: str) -> tuple[int, int]:
    if block == "TE":
        return 0, 0
    if block == "other":
        return 2, 0
    side = 0 if block.startswith("IN") else 1 if block == "MID" else 2
    return 1, side * 100 + (0 if block == "MID" else int(block[-2:]))


def _by_block(
    modules: dict[str, dict[str, torch.Tensor]], block_of: Any = keys.block_of, order: Any = None
) -> dict[str, dict[str, Any]]:
    """Modules, ranks, alphas and delta norms per block (coarse diffusers blocks by default)."""
    blocks: dict[str, dict[str, list]] = defaultdict(lambda: {"ranks": [], "alphas": [], "norms": []})
    for name, parts in modules.items():
        entry = blocks[block_of(name)]
        entry["ranks"].append(_rank(parts))
        entry["alphas"].append(float(parts[keys.ALPHA]))
        entry["norms"].append(_delta_norm(parts))
    out = {}
    for block, entry in sorted(blocks.items(), key=lambda kv: (order or _block_order)(kv[0])):
        out[block] = {
            "modules": len(entry["ranks"]),
            "ranks": sorted(set(entry["ranks"])),
            "alphas": sorted(set(entry["alphas"])),
            "mean_norm": sum(entry["norms"]) / len(entry["norms"]),
            "max_norm": max(entry["norms"]),
        }
    return out


def inspect_lora(path: str | os.PathLike[str], base: str | None = None) -> dict[str, Any]:
    """Report on a LoRA file; `base` is a model name or path for the matching check."""
    path = Path(path)
    raw, metadata = read_tensors(path)
    loaded = load_lora(path)
    modules = loaded.modules
    conv = [n for n, p in modules.items() if _is_conv(p)]
    linear = [n for n in modules if n not in conv]
    report: dict[str, Any] = {
        "path": str(path),
        "format": loaded.source_format,
        "num_modules": len(modules),
        "num_tensors": len(raw),
        "num_unet_modules": sum(1 for n in modules if keys.component_of(n) == "unet"),
        "num_text_encoder_modules": sum(1 for n in modules if keys.component_of(n) == "text_encoder"),
        "algorithms": sorted({algorithm_of(p).ALGO for p in modules.values()}),
        "dora": any(DORA_KEY in p for p in modules.values()),
        "rank": _most_common([_rank(modules[n]) for n in linear]),
        "alpha": _most_common([float(modules[n][keys.ALPHA]) for n in linear]),
        "conv_rank": _most_common([_rank(modules[n]) for n in conv]),
        "conv_alpha": _most_common([float(modules[n][keys.ALPHA]) for n in conv]),
        "num_conv_modules": len(conv),
        "dtype": sorted({str(t.dtype).replace("torch.", "") for t in raw.values()}),
        "file_size": path.stat().st_size,
        "blocks": _by_block(modules),
        "sd_blocks": _by_block(modules, _sd_block, _sd_block_order),
        "metadata": metadata,
        "training": training_summary(metadata),
        "tag_frequency": _tag_frequency(metadata),
    }
    if base is not None:
        report.update(_match_base(loaded, raw, base, bool(conv)))
    return report


def _module_of_raw_key(key: str, value: torch.Tensor) -> str | None:
    """The Kohya module a key of the file (in whatever layout) belongs to."""
    converted, _, _ = to_kohya({key: value})
    parts = keys.split_key(next(iter(converted), ""))
    return parts[0] if parts else None


def architecture_family(base: str) -> str | None:
    """The shipped architecture `base` names (`sd15`, `SD1.5`), unless it is a built-in model or a
    path that exists: those are loaded as they always were."""
    from library.models import builtin_names
    from library.models.configs import FAMILIES

    family = base.strip().lower().replace(".", "").replace("-", "")
    if family not in FAMILIES or base in builtin_names() or Path(base).expanduser().exists():
        return None
    return family


def _base_modules(base: str) -> tuple[torch.nn.Module, torch.nn.Module, bool]:
    """(unet, text encoder, architecture only?) for `inspect --base`."""
    family = architecture_family(base)
    if family is not None:
        from library.models.modules import build_empty_architecture

        return (*build_empty_architecture(family), True)
    from library.models import load_model_bundle

    bundle = load_model_bundle(base)
    encoders = bundle.text_encoders()
    return bundle.unet, encoders if len(encoders) > 1 else bundle.text_encoder, False  # SDXL: (te1, te2)


def _match_base(loaded: LoadedLoRA, raw: dict[str, torch.Tensor], base: str, conv: bool) -> dict[str, Any]:
    unet, text_encoder, architecture_only = _base_modules(base)
    loaded = to_model_names(loaded, unet, text_encoder)  # diffusers-style names on an SDXL base
    matched, unmatched, problems = pair_modules(loaded, unet, text_encoder)
    expected = find_targets(unet, text_encoder, conv=conv)
    return {
        "base": base,
        "base_architecture_only": architecture_only,
        "matched_modules": len(matched),
        "unmatched_keys": sorted(k for k, v in raw.items() if _module_of_raw_key(k, v) in set(unmatched)),
        "unmatched_reasons": problems,
        "modules_without_lora": [t.name for t in expected if t.name not in matched],
    }


def _tag_frequency(metadata: dict[str, str]) -> dict[str, dict[str, int]]:
    try:
        parsed = json.loads(metadata.get("ss_tag_frequency") or "{}")
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _date(value: str | None) -> str | None:
    try:
        return datetime.datetime.fromtimestamp(float(value)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return None


def training_summary(md: dict[str, str]) -> dict[str, str]:
    """The metadata's training settings as labelled plain-language lines (empty when absent)."""
    def get(key: str) -> str | None:
        value = md.get(key)
        return None if value in (None, "", "None") else value

    lines: dict[str, str | None] = {
        "base model": get("ss_sd_model_name") and f"{get('ss_sd_model_name')} ({get('ss_base_model_version') or '?'})",
        "trained": get("ss_steps") and (
            f"{get('ss_steps')} steps, epoch {get('ss_epoch') or '?'} of {get('ss_num_epochs') or '?'}, "
            f"batch size {get('ss_total_batch_size') or get('ss_batch_size_per_device') or '?'}"
        ),
        "optimizer": get("ss_optimizer") and (
            f"{get('ss_optimizer')}, learning rate {get('ss_learning_rate')}"
            + (f" (UNet {get('ss_unet_lr')})" if get("ss_unet_lr") else "")
            + (f" (text encoder {get('ss_text_encoder_lr')})" if get("ss_text_encoder_lr") else "")
            + (f", {get('ss_lr_scheduler')} schedule" if get("ss_lr_scheduler") else "")
        ),
        "network": get("ss_network_module") and (
            f"{get('ss_network_module')} rank {get('ss_network_dim')} alpha {get('ss_network_alpha')}"
            + (f" args {get('ss_network_args')}" if get("ss_network_args") else "")
        ),
        "resolution": get("ss_resolution") and (
            f"{get('ss_resolution')}" + (", aspect buckets" if get("ss_enable_bucket") == "True" else "")
        ),
        "noise": ", ".join(
            f"{label} {get(key)}" for label, key in (("offset", "ss_noise_offset"), ("min SNR gamma", "ss_min_snr_gamma"))
            if get(key)
        ) or None,
        "dataset": _dataset_words(get("ss_dataset_dirs")),
        "started": _date(get("ss_training_started_at")),
        "finished": _date(get("ss_training_finished_at")),
        "comment": get("ss_training_comment"),
    }
    return {k: v for k, v in lines.items() if v}


def _dataset_words(raw: str | None) -> str | None:
    try:
        dirs = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return None
    parts = [f"{name}: {info.get('img_count')} images x {info.get('n_repeats')} repeats" for name, info in dirs.items()]
    return "; ".join(parts) or None


def verify_lora(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(checks passed, problems) for a LoRA file: header, pairing, finiteness, stored hashes."""
    passed: list[str] = []
    try:
        if Path(path).suffix.lower() == ".safetensors":
            header = read_header(path)
            passed.append(f"header: {len(header.entries)} tensors, {header.header_len}-byte header")
        raw, metadata = read_tensors(path)
        if Path(path).suffix.lower() != ".safetensors":  # --save_model_as ckpt/pt: a bare state dict, no metadata
            passed.append(f"{Path(path).suffix} file: {len(raw)} tensors, read without running code (weights_only)")
    except LorasmithError as exc:
        return passed, [str(exc)]
    tensors, fmt, unplaced = to_kohya(raw, metadata)
    problems = [f"not a LoRA key: {k}" for k in unplaced[:10]]
    structure = structure_problems(tensors)
    problems += structure
    if not structure:
        count = len(keys.group_by_module(tensors)[0])
        passed.append(f"{count} modules ({fmt}): tensors pair up and ranks agree, all finite")
    stored = metadata.get("sshs_model_hash")
    if stored:
        actual = data_region_sha256(path)
        if actual == stored:
            passed.append("sshs_model_hash matches the tensor data")
        else:
            problems.append(f"sshs_model_hash is {stored} but the tensor data hashes to {actual} (file changed or damaged)")
    legacy = metadata.get("sshs_legacy_hash")
    if legacy and not problems:
        actual_legacy = precalculate_hashes(raw, metadata)[1]
        if actual_legacy != legacy:
            problems.append(f"sshs_legacy_hash is {legacy} but recomputes to {actual_legacy}")
        else:
            passed.append("sshs_legacy_hash matches")
    return passed, problems
