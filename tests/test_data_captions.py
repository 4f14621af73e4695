"""Caption processing in sd-scripts' order, deterministic under a seeded rng."""
from __future__ import annotations

import random

from library.data.captions import CaptionOptions, process_caption, split_tags, tag_counts

CAPTION = "ohwx woman, red dress, smiling, outdoors, bokeh"


def test_no_options_keeps_first_line_only() -> None:
    assert process_caption("a, b\nsecond line", CaptionOptions(), 1, random.Random(0)) == "a, b"


def test_shuffle_keeps_first_tokens_and_is_seeded() -> None:
    opts = CaptionOptions(shuffle_caption=True, keep_tokens=1)
    first = process_caption(CAPTION, opts, 1, random.Random(7))
    again = process_caption(CAPTION, opts, 1, random.Random(7))
    assert first == again
    tags = first.split(", ")
    assert tags[0] == "ohwx woman"
    assert sorted(tags) == sorted(t.strip() for t in CAPTION.split(","))
    # the same rng gives exactly random.shuffle's permutation of the flexible tags
    flex = ["red dress", "smiling", "outdoors", "bokeh"]
    random.Random(7).shuffle(flex)
    assert tags[1:] == flex
    orders = {process_caption(CAPTION, opts, 1, random.Random(s)) for s in range(20)}
    assert len(orders) > 5 and all(o.startswith("ohwx woman, ") for o in orders)


def test_keep_tokens_counts_tags_including_prefix() -> None:
    # the prefix joins the first tag (sd-scripts adds it before splitting)
    opts = CaptionOptions(shuffle_caption=True, keep_tokens=1, caption_prefix="masterpiece")
    out = process_caption("ohwx, a, b, c", opts, 1, random.Random(1))
    assert out.startswith("masterpiece ohwx, ")


def test_keep_tokens_separator_front_and_back() -> None:
    opts = CaptionOptions(shuffle_caption=True, keep_tokens=5, keep_tokens_separator="|||")
    fixed, flex, suffix = split_tags("ohwx, woman ||| a, b, c ||| best quality", opts)
    assert (fixed, flex, suffix) == (["ohwx", "woman"], ["a", "b", "c"], ["best quality"])
    out = process_caption("ohwx, woman ||| a, b, c ||| best quality", opts, 1, random.Random(3))
    assert out.startswith("ohwx, woman, ") and out.endswith(", best quality")


def test_caption_dropout_rate_and_every_n_epochs() -> None:
    always = CaptionOptions(caption_dropout_rate=1.0)
    assert process_caption(CAPTION, always, 1, random.Random(0)) == ""
    every = CaptionOptions(caption_dropout_every_n_epochs=2)
    assert process_caption(CAPTION, every, 2, random.Random(0)) == ""
    assert process_caption(CAPTION, every, 3, random.Random(0)) == CAPTION
    half = CaptionOptions(caption_dropout_rate=0.5)
    dropped = sum(process_caption(CAPTION, half, 1, random.Random(s)) == "" for s in range(400))
    assert 150 < dropped < 250


def test_tag_dropout_after_shuffle_never_drops_kept_tags() -> None:
    opts = CaptionOptions(keep_tokens=1, caption_tag_dropout_rate=1.0)
    assert process_caption(CAPTION, opts, 1, random.Random(0)) == "ohwx woman"
    partial = CaptionOptions(caption_tag_dropout_rate=0.5)
    out = process_caption(CAPTION, partial, 1, random.Random(5))
    # without shuffle the survivors keep their order
    tags = [t.strip() for t in CAPTION.split(",")]
    kept = out.split(", ") if out else []
    assert kept == [t for t in tags if t in kept]


def test_prefix_suffix_and_secondary_separator() -> None:
    opts = CaptionOptions(caption_prefix="pre", caption_suffix="post", secondary_separator=";;;")
    assert process_caption("a;;;b", opts, 1, random.Random(0)) == "pre a,b post"


def test_fixed_flag() -> None:
    assert CaptionOptions(caption_prefix="x", keep_tokens=2).is_fixed
    assert not CaptionOptions(shuffle_caption=True).is_fixed
    assert not CaptionOptions(caption_dropout_every_n_epochs=3).is_fixed


def test_tag_counts_lowercases_and_skips_empty() -> None:
    assert tag_counts(["A, b,, ", "a"]) == {"a": 2, "b": 1}
