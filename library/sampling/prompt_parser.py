"""AUTOMATIC1111 prompt syntax: attention weights, BREAK, <lora:...> tags, 75-token chunks.

Behaviour follows A1111's `prompt_parser.parse_prompt_attention` and
`sd_hijack_clip.tokenize_line`:
- ``(text)`` multiplies attention by 1.1, ``[text]`` divides by 1.1, ``(text:1.3)``
  sets the factor; nesting multiplies; unclosed brackets apply to the end of the prompt;
  ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters.
- ``BREAK`` (upper case, a whole word) ends the current 75-token chunk.
- Long prompts continue in further chunks of 75 tokens, each wrapped as BOS + 75 + EOS;
  when a chunk fills up and its last comma is at most 20 tokens back, the tokens after
  that comma move to the next chunk.
- ``<lora:NAME>`` / ``<lora:NAME:WEIGHT>`` tags are removed from the text and returned.
- Settings tags as the Randomizer Keywords extension writes them (``<cfg_scale:5>``,
  ``<sampler_name:DPM++ 2M Karras>``, ``<steps:30>``, ``<checkpoint:NAME>`` ...) are removed
  and returned as typed values; any other ``<name:value>`` tag is an error naming it,
  so it never reaches the text encoder as text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from library.errors import SamplingError

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20
BREAK = "BREAK"

# one token of attention syntax per match; the weight group catches ":1.3)"
_ATTENTION = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.DOTALL)
# one parser for every <name:value> tag; <hypernet:...> is left in the text as before (not supported)
_ANGLE_TAG = re.compile(r"<([A-Za-z_]+):([^<>]*)>")
LORA_KINDS = ("lora", "lyco")
PASSED_THROUGH = ("hypernet",)
# Randomizer Keywords tag -> (SampleRequest field, value type); checkpoint/vae name files.
SETTING_TAGS: dict[str, tuple[str, type]] = {
    "checkpoint": ("checkpoint", str), "sampler_name": ("sampler", str), "cfg_scale": ("cfg_scale", float),
    "steps": ("steps", int), "width": ("width", int), "height": ("height", int), "seed": ("seed", int),
    "clip_skip": ("clip_skip", int), "denoising_strength": ("denoising_strength", float), "vae": ("vae", str),
}


@dataclass(frozen=True)
class LoraTag:
    """A `<lora:NAME:WEIGHT>` tag found in a prompt."""

    name: str
    weight: float = 1.0


def extract_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """Remove `<lora:NAME[:WEIGHT]>` tags from a prompt; return the text and the tags in order.

    Settings tags are checked but stay in the text, for `extract_prompt_tags` to read later
    (training samples drop the LoRA tags, then sample the rest like `lorasmith sample`).
    """
    text, tags, _settings = extract_prompt_tags(prompt, keep_settings=True)
    return text, tags


def extract_prompt_tags(prompt: str, keep_settings: bool = False) -> tuple[str, list[LoraTag], dict[str, object]]:
    """(text without tags, LoRA tags in order, settings by SampleRequest field); the last setting tag wins."""
    tags: list[LoraTag] = []
    settings: dict[str, object] = {}

    def take(match: re.Match[str]) -> str:
        kind = match.group(1).lower()
        if kind in LORA_KINDS:
            tags.append(_lora_tag(match))
        elif kind in SETTING_TAGS:
            field_name, kind_type = SETTING_TAGS[kind]
            settings[field_name] = _setting_value(match.group(0), match.group(2).strip(), kind_type)
            if keep_settings:
                return match.group(0)
        elif kind in PASSED_THROUGH:
            return match.group(0)
        else:
            raise SamplingError(
                f"prompt: unknown tag {match.group(0)!r}",
                ["known tags: <lora:NAME:WEIGHT>, <lyco:...>, "
                 + ", ".join(f"<{name}:...>" for name in SETTING_TAGS),
                 "to write '<' or '>' as text, leave out the ':' or put a space after '<'"])
        return ""

    return _ANGLE_TAG.sub(take, prompt), tags, settings


def _lora_tag(match: re.Match[str]) -> LoraTag:
    args = [a.strip() for a in match.group(2).split(":")]
    if not args or not args[0]:
        raise SamplingError(f"prompt: LoRA tag {match.group(0)!r} has no name", ["write it as <lora:NAME:0.8>"])
    weight = 1.0
    if len(args) > 1 and args[1]:
        try:
            weight = float(args[1])
        except ValueError:
            raise SamplingError(
                f"prompt: LoRA tag {match.group(0)!r} has weight {args[1]!r}, not a number",
                ["write the weight as a number, e.g. <lora:NAME:0.8>"],
            ) from None
    return LoraTag(args[0], weight)


def _setting_value(tag: str, value: str, kind: type) -> object:
    """A settings tag's value as int/float/str; a wrong one is an error naming the tag."""
    if not value:
        raise SamplingError(f"prompt: tag {tag!r} has no value", ["write it as e.g. <steps:30>"])
    if kind is str:
        return value
    try:
        return kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SamplingError(f"prompt: tag {tag!r} has value {value!r}, not {what}",
                            [f"write {what}, e.g. {'<steps:30>' if kind is int else '<cfg_scale:7.5>'}"]) from None


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs; BREAK appears as ("BREAK", -1)."""
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply_from(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for m in _ATTENTION.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            res.append([tok[1:], 1.0])
        elif tok == "(":
            round_open.append(len(res))
        elif tok == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply_from(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            multiply_from(round_open.pop(), ROUND_MULTIPLIER)
        elif tok == "]" and square_open:
            multiply_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(tok)):
                if i > 0:
                    res.append([BREAK, -1.0])
                res.append([part, 1.0])
    for pos in round_open:
        multiply_from(pos, ROUND_MULTIPLIER)
    for pos in square_open:
        multiply_from(pos, SQUARE_MULTIPLIER)
    return _merge_equal_weights(res)


def _merge_equal_weights(res: list[list]) -> list[tuple[str, float]]:
    if not res:
        return [("", 1.0)]
    merged = [res[0]]
    for text, weight in res[1:]:
        if weight == merged[-1][1] and weight != -1.0:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(t, w) for t, w in merged]


@dataclass
class PromptChunk:
    """One 77-token window: BOS + 75 tokens (padded with EOS) + EOS, with a weight per token."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    # (offset in tokens, embedding): textual-inversion vectors that replace the placeholder slots
    fixes: list[tuple[int, object]] = field(default_factory=list)


def chunk_tokens(runs: list[tuple[list, float]], *, bos: int, eos: int, comma: int,
                 chunk_length: int = CHUNK_LENGTH, backtrack: int = COMMA_BACKTRACK,
                 placeholder: int = 0) -> list[PromptChunk]:
    """A1111 chunking of weighted token runs; a run with weight -1 is a BREAK.

    A run may hold embeddings (objects with a `count` of vectors) besides token ids: each takes
    `count` placeholder slots with the run's weight and a fix, and starts a new chunk when it
    would not fit in this one (A1111's tokenize_line). Fixes move with tokens the comma rule moves.
    """
    chunks: list[PromptChunk] = []
    cur = PromptChunk()
    last_comma = -1

    def close() -> None:
        nonlocal cur, last_comma
        pad = chunk_length - len(cur.tokens)
        cur.tokens = [bos] + cur.tokens + [eos] * pad + [eos]
        cur.weights = [1.0] + cur.weights + [1.0] * pad + [1.0]
        chunks.append(cur)
        cur, last_comma = PromptChunk(), -1

    for tokens, weight in runs:
        if weight == -1.0:
            close()
            continue
        for token in tokens:
            if token == comma:
                last_comma = len(cur.tokens)
            elif backtrack and len(cur.tokens) == chunk_length and last_comma != -1 \
                    and len(cur.tokens) - last_comma <= backtrack:
                cut = last_comma + 1
                moved = (cur.tokens[cut:], cur.weights[cut:], [(o - cut, e) for o, e in cur.fixes if o >= cut])
                cur.tokens, cur.weights = cur.tokens[:cut], cur.weights[:cut]
                cur.fixes = [(o, e) for o, e in cur.fixes if o < cut]
                close()
                cur.tokens, cur.weights, cur.fixes = list(moved[0]), list(moved[1]), moved[2]
            if len(cur.tokens) == chunk_length:
                close()
            if isinstance(token, int):
                cur.tokens.append(token)
                cur.weights.append(weight)
                continue
            count = int(token.count)
            if count > chunk_length:
                raise SamplingError(f"embedding {token.name} has {count} vectors; at most {chunk_length} fit a chunk")
            if len(cur.tokens) + count > chunk_length:
                close()
            cur.fixes.append((len(cur.tokens), token))
            cur.tokens += [placeholder] * count
            cur.weights += [weight] * count
    if cur.tokens or not chunks:
        close()
    return chunks


def tokenize_prompt(tokenizer, prompt: str, embeddings=None) -> list[PromptChunk]:
    """Prompt (already free of LoRA tags) → A1111 chunks, using the model's CLIP tokenizer.

    With `embeddings` (library.sampling.embeddings.EmbeddingDatabase) embedding names become slots.
    """
    runs = parse_prompt_attention(prompt)
    texts = [t for t, _ in runs]
    ids = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    token_runs = [(list(i), w) if not (t == BREAK and w == -1.0) else ([], -1.0) for i, (t, w) in zip(ids, runs)]
    if embeddings is not None:
        token_runs = [(embeddings.substitute(i), w) for i, w in token_runs]
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    return chunk_tokens(token_runs, bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, comma=comma)
