"""The plan's GPU-memory section: the estimate's parts, the cards it fits, and options that would make it fit.

Kept free of torch (the GUI imports it for its field list); the estimate itself is
`library.training.vram_estimate`, imported when a section is first drawn.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from library.config import TrainConfig

if TYPE_CHECKING:
    from library.training.vram_estimate import VramEstimate

GB = 1e9
CARDS_GB = (8, 12, 16, 24, 48, 80)
# What the card loses before PyTorch allocates anything (CUDA context, kernels): not in
# max_memory_allocated, but it must fit on the card too.
CUDA_CONTEXT_BYTES = 600 * 2**20


def card_fits(total_bytes: int, cards_gb: tuple[int, ...] = CARDS_GB) -> dict[int, bool]:
    """Which card sizes (GB as sold, i.e. GiB of memory) hold the peak plus the CUDA context."""
    return {gb: total_bytes + CUDA_CONTEXT_BYTES <= gb * 2**30 for gb in cards_gb}


def smallest_card(total_bytes: int) -> int | None:
    return next((gb for gb, ok in card_fits(total_bytes).items() if ok), None)


def what_ifs(cfg: TrainConfig, est: VramEstimate) -> list[tuple[str, int]]:
    """Options that lower the peak, each with the estimated total it would give (activations scale with the batch)."""
    out = []
    static = est.training_peak - est.activations
    if not cfg.gradient_checkpointing:
        out.append(("--gradient_checkpointing", est.with_checkpointing_flipped()))
    if cfg.train_batch_size > 1:
        out.append(("--train_batch_size 1", max(static + est.activations // cfg.train_batch_size,
                                                est.caching_peak + est.workspace)))
    if not cfg.cache_latents:
        out.append(("--cache_latents", est.training_peak - est.vae_bytes))
    if cfg.mixed_precision == "no":
        out.append(("--mixed_precision bf16 (fp16 on cards without bf16)",
                    est.training_peak - est.weights["unet"] // 2 - est.activations // 2))
    if hasattr(cfg, "fp8_base") and not cfg.fp8_base and cfg.mixed_precision != "no":
        out.append(("--fp8_base", est.training_peak - est.weights["unet"] // 2))
    if hasattr(cfg, "lowvram") and not cfg.lowvram and "text_encoder" in est.weights and cfg.network_train_unet_only:
        out.append(("--lowvram", est.training_peak - est.weights["text_encoder"]))
    return [(flag, total) for flag, total in out if total < est.total]


def _gb(n: int) -> str:
    return f"{n / GB:.2f} GB"


def _row(label: str, size: int, extra: str = "") -> str:
    return f"  {label:<22} {_gb(size):>10}" + (f"  ({extra})" if extra else "")


def format_estimate(cfg: TrainConfig, est: VramEstimate) -> str:
    """The plan's GPU-memory section: parts, total, cards it fits, and what would make it fit."""
    w, h = est.resolution
    flipped = "off" if est.gradient_checkpointing else "on"
    lines = [f"Expected peak GPU memory ({w}x{h}, batch {est.batch}, mixed_precision {cfg.mixed_precision}, "
             f"gradient checkpointing {'on' if est.gradient_checkpointing else 'off'}):"]
    lines += [_row(f"{name} weights", size) for name, size in est.weights.items()]
    lines += [_row("LoRA parameters", est.lora_params, f"{est.lora_param_count:,} parameters"),
              _row("gradients", est.gradients),
              _row("optimizer states", est.optimizer_states, est.optimizer_note),
              _row("activations (traced)", est.activations, f"{_gb(est.activations_other)} with checkpointing {flipped}"),
              _row("kernel workspaces", est.workspace, "allowance")]
    if est.caching_peak:
        lines.append(_row("while caching latents", est.caching_peak + est.workspace, "weights + VAE + one encoding"))
    lines.append(_row("peak", est.total, f"+ ~{CUDA_CONTEXT_BYTES / GB:.1f} GB CUDA context on the card"))
    fits = card_fits(est.total)
    yes = [f"{gb} GB" for gb, ok in fits.items() if ok]
    no = [f"{gb} GB" for gb, ok in fits.items() if not ok]
    lines.append(f"  fits: {', '.join(yes) or 'none of the listed cards'}" + (f"; not {', '.join(no)}" if no else ""))
    if no:
        for flag, total in what_ifs(cfg, est):
            card = smallest_card(total)
            lines.append(f"  with {flag}: ~{_gb(total)}" + (f", fits {card} GB" if card else ""))
    lines += [f"  note: {n}" for n in est.notes]
    return "\n".join(lines)


# The options the estimate reads; the GUI re-estimates only when one of them changes.
ESTIMATE_FIELDS = (
    "pretrained_model_name_or_path", "resolution", "train_batch_size", "mixed_precision", "gradient_checkpointing",
    "network_dim", "network_alpha", "network_args", "network_dropout", "network_train_unet_only",
    "network_train_text_encoder_only", "optimizer_type", "optimizer_args", "learning_rate", "unet_lr",
    "text_encoder_lr", "full_fp16", "full_bf16", "cache_latents", "vae_batch_size", "max_token_length",
    "fp8_base", "lowvram",
)


def vram_section(cfg: TrainConfig) -> str:
    """The GPU-memory section of the plan, or one line saying why there is none (never raises for bad input)."""
    from library.errors import LorasmithError
    from library.training.vram_estimate import estimate_vram

    key = tuple((name, repr(getattr(cfg, name, None))) for name in ESTIMATE_FIELDS)
    if key not in _SECTIONS:
        try:
            text = format_estimate(cfg, estimate_vram(cfg))
        except LorasmithError as exc:
            text = f"Expected peak GPU memory: not available ({exc.summary})"
        except Exception as exc:  # the trace met an operation fake tensors cannot run: the plan still shows
            text = f"Expected peak GPU memory: not available ({type(exc).__name__}: {exc})"
        if len(_SECTIONS) >= 16:
            _SECTIONS.pop(next(iter(_SECTIONS)))
        _SECTIONS[key] = text
    return _SECTIONS[key]


_SECTIONS: dict[tuple, str] = {}
