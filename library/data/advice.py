"""The training arithmetic and instance-token advice a person-LoRA guide teaches, as plan warnings.

Rules, with where they come from:

- batch size: when images × repeats (plus the regularization items balanced to
  match) is not a multiple of the batch size, every epoch ends with a short
  batch (sd-scripts batches each bucket and keeps the remainder). A repeats
  value that makes it divide is suggested.
- total training: the reference is the final run of the person-LoRA guide this
  project follows (InfluxOW/Stable-Diffusion-Text-To-Person, DAdaptAdam): 22
  photos × 15 repeats = 330 image-repeats per epoch × 10 epochs = 3,300 training
  image-repeats (2,200 optimizer steps at batch 3 with as many regularization
  images). A run that trains on fewer than half (1,650) or more than twice
  (6,600) as many image-repeats is flagged. The guide measured this with an
  adaptive optimizer (DAdaptAdam; Prodigy adapts its step the same way); for
  other optimizers no such measured range is known and the warning says so.
- `--target_steps`: the repeats that give about that many optimizer steps over
  the planned epochs.
- instance token: it should be one CLIP token the model has no meaning for. A
  token that splits into several pieces spreads the new concept over words the
  model already knows; a token with an id below 10,000 in CLIP's BPE vocabulary
  (the 512 byte tokens and the ~9,500 earliest merges: common English words and
  names, "woman" 2308, "john" 1742) already means something. Suggested instead: single tokens of the form
  `<two letters>wx` among the last 9,000 merges (ids 40,000 and up) — US-state
  weather hashtags such as "ohwx" (Ohio weather, id 47993, the token the guide
  and most DreamBooth tutorials use), which CLIP saw rarely and which carry no
  visual meaning; listed rarest first.
"""
from __future__ import annotations

import math
import re

REFERENCE_ITEMS = 3300  # the guide's run: 330 image-repeats per epoch × 10 epochs
ITEMS_RANGE = (REFERENCE_ITEMS // 2, REFERENCE_ITEMS * 2)
ADAPTIVE_OPTIMIZERS = ("dadapt", "prodigy")
COMMON_TOKEN_IDS = 10_000  # ids are in merge order: the lowest are the most frequent pieces
RARE_TOKEN_IDS = 40_000
_RARE_PATTERN = re.compile(r"[a-z]{2}wx</w>")


def batch_remainder_warning(images: int, repeats: int, reg_factor: int, batch_size: int) -> str | None:
    """A warning when images × repeats (× 2 with balanced reg images) leaves a short last batch."""
    items = images * repeats * reg_factor
    if batch_size <= 1 or items % batch_size == 0:
        return None
    fits = [r for r in range(max(1, repeats - batch_size), repeats + batch_size + 1) if images * r * reg_factor % batch_size == 0]
    better = min(fits, key=lambda r: (abs(r - repeats), r)) if fits else None
    hint = f"; {better} repeats make it divide" if better else ""
    return (f"{items} items per epoch ({images} images × {repeats} repeats{' × 2 with regularization' if reg_factor == 2 else ''}) "
            f"is not a multiple of the batch size {batch_size}: each epoch ends with a batch of {items % batch_size}{hint}")


def steps_range_warning(train_items_seen: int, optimizer_type: str | None) -> str | None:
    """A warning when the run trains on far fewer or far more image-repeats than the guide's run."""
    lo, hi = ITEMS_RANGE
    if lo <= train_items_seen <= hi:
        return None
    opt = optimizer_type or "AdamW"
    adaptive = any(opt.lower().startswith(a) for a in ADAPTIVE_OPTIMIZERS)
    basis = ("" if adaptive else f" (measured with DAdaptAdam; for {opt} no measured range is known, take it as a rough guide)")
    side = "undertrained" if train_items_seen < lo else "overtrained"
    return (f"the run trains on {train_items_seen} image-repeats (images × repeats × epochs), likely {side}: the person-LoRA "
            f"guide's run (InfluxOW/Stable-Diffusion-Text-To-Person) trained 3,300 and {lo}–{hi} is a sound range{basis}; "
            "change repeats or epochs")


def suggest_repeats(target_steps: int, epochs: int, repeats: list[int], images: list[int], batch_size: int,
                    gradient_accumulation_steps: int, reg_factor: int) -> list[int]:
    """Repeats per training folder giving about `target_steps` optimizer steps over `epochs` (same ratios kept)."""
    per_epoch_items = target_steps * batch_size * gradient_accumulation_steps / (epochs * reg_factor)
    current = sum(i * r for i, r in zip(images, repeats))
    factor = per_epoch_items / current if current else 1.0
    return [max(1, round(r * factor)) for r in repeats]


def planned_steps(epochs: int, train_items: int, reg_factor: int, batch_size: int, gradient_accumulation_steps: int) -> int:
    """Optimizer steps of a plan without bucket remainders (the repeats suggestion's own arithmetic)."""
    return epochs * math.ceil(math.ceil(train_items * reg_factor / batch_size) / gradient_accumulation_steps)


def token_warnings(token: str, tokenizer) -> list[tuple[str, str]]:
    """(problem, fix) about one instance token: split into several CLIP tokens, or already a common word."""
    pieces = tokenizer.tokenize(token)
    vocab = tokenizer.get_vocab()
    fix = "rename the folder with one rare token such as " + ", ".join(rare_tokens(tokenizer, 5, exclude=(token,)))
    if len(pieces) > 1:
        shown = " + ".join(p.replace("</w>", "") for p in pieces)
        return [(f"instance token '{token}' splits into {len(pieces)} CLIP tokens ({shown}): the concept is spread "
                 "over tokens the model already knows", fix)]
    if vocab.get(pieces[0], RARE_TOKEN_IDS) < COMMON_TOKEN_IDS:
        return [(f"instance token '{token}' is a common word for CLIP (token id {vocab[pieces[0]]}, below 10,000: "
                 "one of the most frequent): the model already has a meaning for it", fix)]
    return []


def instance_token_advice(class_tokens: list[str | None]) -> list[tuple[str, str]]:
    """(problem, fix) for every folder's instance token, with SD1.x's shipped CLIP tokenizer."""
    tokens = instance_tokens(class_tokens)
    if not tokens:
        return []
    from library.models.tokenizer import load_tokenizer  # builds the vocabulary: seconds, only when needed

    tokenizer = load_tokenizer()
    return [w for t in tokens for w in token_warnings(t, tokenizer)]


def rare_tokens(tokenizer, n: int = 5, exclude: tuple[str, ...] = ()) -> list[str]:
    """Single-token `<two letters>wx` words among CLIP's last merges (ids ≥ 40,000), rarest first."""
    found = sorted(((i, t[:-4]) for t, i in tokenizer.get_vocab().items()
                    if i >= RARE_TOKEN_IDS and _RARE_PATTERN.fullmatch(t)), reverse=True)
    return [t for _, t in found if t not in exclude][:n]


def instance_tokens(class_tokens: list[str | None]) -> list[str]:
    """The instance token of each '<repeats>_<instance> <class>' folder: the first word, once each."""
    seen: list[str] = []
    for text in class_tokens:
        words = (text or "").split()
        if len(words) >= 2 and words[0] not in seen:  # one word is the class alone ('1_woman')
            seen.append(words[0])
    return seen
