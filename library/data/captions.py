"""Caption processing per training step, in sd-scripts' order of operations.

Order (facts from sd-scripts `BaseDataset.process_caption`):
1. `caption_prefix` + " " + caption + " " + `caption_suffix`;
2. drop the whole caption ("") with probability `caption_dropout_rate`, or on
   every epoch divisible by `caption_dropout_every_n_epochs`;
3. keep the first line only;
4. if shuffling or tag dropout is on: split into tags on `caption_separator`;
   the first `keep_tokens` tags stay in front (or, when
   `keep_tokens_separator` occurs in the caption, everything before it stays in
   front and anything after a second occurrence stays at the end); the rest is
   shuffled, then each tag is dropped with `caption_tag_dropout_rate`; tags are
   re-joined with ", ";
5. `secondary_separator` is replaced by `caption_separator`.
Note that the prefix takes part in the split, so with `keep_tokens` it counts
as (part of) the first tag — as in sd-scripts. All randomness comes from the
`rng` argument (a `random.Random`), so a seeded rng gives the same caption.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class CaptionOptions:
    """The caption options of one subset (sd-scripts names)."""

    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0

    @property
    def is_fixed(self) -> bool:
        """True when a caption always becomes the same text (so text-encoder outputs can be cached)."""
        return not (
            self.shuffle_caption
            or self.caption_dropout_rate > 0
            or self.caption_dropout_every_n_epochs > 0
            or self.caption_tag_dropout_rate > 0
        )


def add_prefix_suffix(caption: str, opts: CaptionOptions) -> str:
    """Prefix and suffix joined with a space, as sd-scripts does."""
    if opts.caption_prefix:
        caption = opts.caption_prefix + " " + caption
    if opts.caption_suffix:
        caption = caption + " " + opts.caption_suffix
    return caption


def is_dropped(opts: CaptionOptions, epoch: int, rng: random.Random) -> bool:
    """Whole-caption dropout; the rate draw happens only when the rate is positive (as sd-scripts)."""
    dropped = opts.caption_dropout_rate > 0 and rng.random() < opts.caption_dropout_rate
    every = opts.caption_dropout_every_n_epochs
    return dropped or (every > 0 and epoch % every == 0)


def split_tags(caption: str, opts: CaptionOptions) -> tuple[list[str], list[str], list[str]]:
    """(fixed front tags, flexible tags, fixed end tags) following keep_tokens / keep_tokens_separator."""
    sep = opts.caption_separator
    kts = opts.keep_tokens_separator
    if kts and kts in caption:
        fixed_part, flex_part = caption.split(kts, 1)
        suffix: list[str] = []
        if kts in flex_part:
            flex_part, suffix_part = flex_part.split(kts, 1)
            suffix = [t.strip() for t in suffix_part.split(sep) if t.strip()]
        fixed = [t.strip() for t in fixed_part.split(sep) if t.strip()]
        flex = [t.strip() for t in flex_part.split(sep) if t.strip()]
        return fixed, flex, suffix
    tags = [t.strip() for t in caption.strip().split(sep)]
    if opts.keep_tokens > 0:
        return tags[: opts.keep_tokens], tags[opts.keep_tokens :], []
    return [], tags, []


def shuffle_and_drop(caption: str, opts: CaptionOptions, rng: random.Random) -> str:
    """Shuffle the flexible tags, then drop each with the tag dropout rate; join with ", "."""
    fixed, flex, suffix = split_tags(caption, opts)
    if opts.shuffle_caption:
        rng.shuffle(flex)
    if opts.caption_tag_dropout_rate > 0:
        flex = [t for t in flex if rng.random() >= opts.caption_tag_dropout_rate]
    return ", ".join(fixed + flex + suffix)


def process_caption(caption: str, opts: CaptionOptions, epoch: int, rng: random.Random) -> str:
    """The caption the text encoder sees for one item at one step (see module docstring for the order)."""
    caption = add_prefix_suffix(caption, opts)
    if is_dropped(opts, epoch, rng):
        return ""
    caption = caption.split("\n")[0]
    if opts.shuffle_caption or opts.caption_tag_dropout_rate > 0:
        caption = shuffle_and_drop(caption, opts, rng)
    if opts.secondary_separator:
        caption = caption.replace(opts.secondary_separator, opts.caption_separator)
    return caption


def tag_counts(captions: list[str]) -> dict[str, int]:
    """Lower-cased comma-separated tag counts, sd-scripts' `ss_tag_frequency` rule for one folder."""
    counts: dict[str, int] = {}
    for caption in captions:
        for tag in caption.split(","):
            tag = tag.strip().lower()
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return counts
