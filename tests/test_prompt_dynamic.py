"""Dynamic prompts: variants, weights, wildcards, nesting, determinism from the seed."""
from __future__ import annotations

from collections import Counter

import pytest

from library.errors import SamplingError
from library.sampling.dynamic_prompts import expand_prompt


def test_plain_prompt_untouched():
    assert expand_prompt("photo of (ohwx:1.2) man", 5) == "photo of (ohwx:1.2) man"


def test_variant_choice_is_deterministic_and_covers_options():
    outs = {expand_prompt("a {red|green|blue} car", s) for s in range(60)}
    assert outs == {"a red car", "a green car", "a blue car"}
    assert expand_prompt("a {red|green|blue} car", 11) == expand_prompt("a {red|green|blue} car", 11)


def test_weights_are_weights_not_counts():
    counts = Counter(expand_prompt("{9::day|night}", s) for s in range(2000))
    # expected 1800 : 200; binomial sd ~13, so +-60 is far outside chance
    assert abs(counts["day"] - 1800) < 60 and counts["day"] + counts["night"] == 2000


def test_nested_variants():
    outs = {expand_prompt("{cat|{small|big} dog}", s) for s in range(100)}
    assert outs == {"cat", "small dog", "big dog"}


def test_wildcards_with_nesting(tmp_path):
    (tmp_path / "colour.txt").write_text("# comment\nred\n\n{dark|light} blue\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "thing.txt").write_text("__colour__ hat\n", encoding="utf-8")
    outs = {expand_prompt("a __sub/thing__", s, tmp_path) for s in range(100)}
    assert outs == {"a red hat", "a dark blue hat", "a light blue hat"}


def test_seed_guide_scene_wildcard(seed_guide_dir):
    wildcards = seed_guide_dir / "wildcards"
    lines = {ln.strip() for ln in (wildcards / "scene.txt").read_text(encoding="utf-8").splitlines() if ln.strip()}
    prompt = "photo of ohwx man, __scene__"
    first = expand_prompt(prompt, 1234, wildcards)
    assert first == expand_prompt(prompt, 1234, wildcards)
    assert first.removeprefix("photo of ohwx man, ") in lines
    assert len({expand_prompt(prompt, s, wildcards) for s in range(30)}) > 10


def test_missing_wildcard_names_file_and_lists_known(tmp_path):
    (tmp_path / "scene.txt").write_text("beach\n", encoding="utf-8")
    with pytest.raises(SamplingError) as exc:
        expand_prompt("__sceen__", 1, tmp_path)
    assert "sceen.txt" in str(exc.value) and "scene" in str(exc.value)
    with pytest.raises(SamplingError, match="wildcards_dir"):
        expand_prompt("__scene__", 1, None)


def test_unbalanced_braces_are_errors():
    with pytest.raises(SamplingError, match="never closed"):
        expand_prompt("a {red|blue car", 1)
    with pytest.raises(SamplingError, match="without"):
        expand_prompt("a red} car {x}", 1)


def test_underscores_in_words_are_not_wildcards():
    assert expand_prompt("snake_case and __ alone {a}", 1) == "snake_case and __ alone a"
