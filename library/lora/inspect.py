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
from library.lora.loading import LoadedLoRA, load_lora, pair_modules
from library.lora.module import delta_weight
from library.lora.targets import find_targets


def _delta_norm(parts: dict[str, torch.Tensor]) -> float:
    """Frobenius norm of scale * up @ down: how strongly a module changes its layer."""
    rank = int(parts[keys.DOWN].shape[0])
    scale = keys.effective_alpha(float(parts[keys.ALPHA]), rank) / rank
    return float(delta_weight(parts[keys.UP], parts[keys.DOWN], scale).norm())


def _most_common(values: list[Any]) -> Any:
    return Counter(values).most_common(1)[0][0] if values else None


_BLOCK_ORDER = ("te_layer", "te_other", "down_blocks", "mid_block", "up_blocks", "unet_other")


def _block_order(block: str) -> tuple[int, int]:
    """Text encoder layers, then the UNet from input to output."""
    stem, _, index = block.rpartition("_") if block[-1:].isdigit() else (block, "", "0")
    rank = _BLOCK_ORDER.index(stem) if stem in _BLOCK_ORDER else len(_BLOCK_ORDER)
    return rank, int(index or 0)


def _by_block(modules: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, Any]]:
    blocks: dict[str, dict[str, list]] = defaultdict(lambda: {"ranks": [], "alphas": [], "norms": []})
    for name, parts in modules.items():
        entry = blocks[keys.block_of(name)]
        entry["ranks"].append(int(parts[keys.DOWN].shape[0]))
        entry["alphas"].append(float(parts[keys.ALPHA]))
        entry["norms"].append(_delta_norm(parts))
    out = {}
    for block, entry in sorted(blocks.items(), key=lambda kv: _block_order(kv[0])):
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
    conv = [n for n, p in modules.items() if p[keys.DOWN].dim() == 4 and tuple(p[keys.DOWN].shape[2:]) != (1, 1)]
    linear = [n for n in modules if n not in conv]
    report: dict[str, Any] = {
        "path": str(path),
        "format": loaded.source_format,
        "num_modules": len(modules),
        "num_tensors": len(raw),
        "num_unet_modules": sum(1 for n in modules if keys.component_of(n) == "unet"),
        "num_text_encoder_modules": sum(1 for n in modules if keys.component_of(n) == "text_encoder"),
        "rank": _most_common([int(modules[n][keys.DOWN].shape[0]) for n in linear]),
        "alpha": _most_common([float(modules[n][keys.ALPHA]) for n in linear]),
        "conv_rank": _most_common([int(modules[n][keys.DOWN].shape[0]) for n in conv]),
        "conv_alpha": _most_common([float(modules[n][keys.ALPHA]) for n in conv]),
        "num_conv_modules": len(conv),
        "dtype": sorted({str(t.dtype).replace("torch.", "") for t in raw.values()}),
        "file_size": path.stat().st_size,
        "blocks": _by_block(modules),
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


def _match_base(loaded: LoadedLoRA, raw: dict[str, torch.Tensor], base: str, conv: bool) -> dict[str, Any]:
    from library.models import load_model_bundle

    bundle = load_model_bundle(base)
    matched, unmatched, problems = pair_modules(loaded, bundle.unet, bundle.text_encoder)
    expected = find_targets(bundle.unet, bundle.text_encoder, conv=conv)
    return {
        "base": base,
        "matched_modules": len(matched),
        "unmatched_keys": sorted(k for k, v in raw.items() if _module_of_raw_key(k, v) in set(unmatched)),
        "unmatched_reasons": problems,
        "modules_without_lora": [t.name for t in expected if t.name not in loaded.modules],
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
        passed.append(f"{len(keys.group_by_module(tensors)[0])} modules ({fmt}): down/up pairs and ranks agree, all finite")
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
