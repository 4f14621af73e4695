"""Dynamic prompts as the sd-dynamic-prompts extension writes them, chosen from a seed.

- ``{a|b|c}`` picks one option; ``{9::day|night}`` weights options (weight 1 when
  omitted: day is chosen 9 times as often as night); options may nest.
- ``__name__`` picks a line of ``<wildcards_dir>/name.txt`` (``__dir/name__`` for a
  subfolder); blank lines and lines starting with ``#`` are skipped; a chosen line
  is expanded again, so wildcard files may hold variants and other wildcards.
Choices are made left to right with ``random.Random(seed)``, so the same seed gives
the same prompt and an image can be reproduced from its seed.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from library.errors import SamplingError
from library.sampling.prompt_files import file_in_folder, names_in_folder

MAX_DEPTH = 20
_WEIGHT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*::(.*)$", re.DOTALL)
_WILDCARD_NAME = re.compile(r"[\w\-./ ]+")


def has_dynamic_syntax(prompt: str) -> bool:
    return "{" in prompt or "__" in prompt


def expand_prompt(prompt: str, seed: int, wildcards_dir: str | Path | None = None) -> str:
    """The prompt with every `{...}` and `__wildcard__` replaced, chosen by `seed`."""
    if not has_dynamic_syntax(prompt):
        return prompt
    rng = random.Random(seed)
    return _Expander(rng, Path(wildcards_dir) if wildcards_dir else None).expand(prompt, 0)


class _Expander:
    def __init__(self, rng: random.Random, wildcards_dir: Path | None) -> None:
        self.rng = rng
        self.wildcards_dir = wildcards_dir
        self._lines: dict[str, list[str]] = {}

    def expand(self, text: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise SamplingError(f"dynamic prompt nests deeper than {MAX_DEPTH} levels: {text[:80]!r}",
                                ["check wildcard files that refer to each other"])
        out: list[str] = []
        i = 0
        while i < len(text):
            if text[i] == "{":
                end = _matching_brace(text, i)
                out.append(self.expand(self._pick_variant(text[i + 1 : end]), depth + 1))
                i = end + 1
            elif text.startswith("__", i) and (end := text.find("__", i + 2)) > i + 2 \
                    and _WILDCARD_NAME.fullmatch(text[i + 2 : end]):
                out.append(self.expand(self.rng.choice(self._wildcard(text[i + 2 : end])), depth + 1))
                i = end + 2
            elif text[i] == "}":
                raise SamplingError(f"dynamic prompt: '}}' without '{{' at position {i} in {text!r}")
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    def _pick_variant(self, body: str) -> str:
        options = _split_top_level(body)
        weights = []
        texts = []
        for option in options:
            m = _WEIGHT.match(option)
            weights.append(float(m.group(1)) if m else 1.0)
            texts.append(m.group(2) if m else option)
        if sum(weights) <= 0:
            raise SamplingError(f"dynamic prompt: all weights are 0 in {{{body}}}")
        return self.rng.choices(texts, weights=weights, k=1)[0]

    def _wildcard(self, name: str) -> list[str]:
        if name in self._lines:
            return self._lines[name]
        if self.wildcards_dir is None:
            raise SamplingError(f"prompt uses __{name}__ but no wildcards folder was given",
                                ["pass --wildcards_dir FOLDER holding name.txt files"])
        path = file_in_folder(self.wildcards_dir, name, ".txt")
        if path is None:  # missing and outside the folder give the same text: a prompt cannot probe the disk
            raise SamplingError(f"wildcard __{name}__: no {name}.txt in {self.wildcards_dir}", [
                "__NAME__ reads NAME.txt inside --wildcards_dir (subfolders allowed; no absolute paths or '..')",
                f"wildcards there: {names_in_folder(self.wildcards_dir, '.txt')}"])
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise SamplingError(f"wildcard __{name}__: cannot read {path} ({exc})",
                                ["save the wildcard file as UTF-8 text"]) from None
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        if not lines:
            raise SamplingError(f"wildcard __{name}__: {path} has no usable lines")
        self._lines[name] = lines
        return lines


def _matching_brace(text: str, start: int) -> int:
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise SamplingError(f"dynamic prompt: '{{' at position {start} is never closed in {text!r}",
                        ["close every {a|b} group with '}'"])


def _split_top_level(body: str) -> list[str]:
    """Split on '|' that are not inside nested braces."""
    parts, depth, cur = [], 0, []
    for ch in body:
        if ch == "|" and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur.append(ch)
    parts.append("".join(cur))
    return parts
