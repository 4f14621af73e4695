"""The CLIP tokenizer of SD1.x, built offline from the BPE file shipped in the package.

Every SD1.x checkpoint uses OpenAI's CLIP ViT-L/14 tokenizer. Rather than fetch
`tokenizer/vocab.json` from a hub, we rebuild its vocabulary and merge list from
OpenAI's original `bpe_simple_vocab_16e6.txt.gz` (see data/NOTICE), in the order
CLIP's `SimpleTokenizer` defines, so token ids match the hub files exactly.
"""
from __future__ import annotations

import functools
import gzip
from importlib import resources

from transformers import CLIPTokenizer

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
# CLIP keeps the first 49152 - 256 - 2 merges of the file (256 byte tokens and 2
# special tokens fill the rest of the 49,152 + 256 = 49,408 ids).
_NUM_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character (GPT-2/CLIP byte-level BPE).

    Printable Latin-1 bytes map to themselves; the rest are shifted above 255 so
    no byte becomes whitespace or a control character.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def read_bpe_merges() -> list[tuple[str, str]]:
    """The merge list CLIP uses: lines 1..48894 of the shipped file (line 0 is a header).

    Only those lines are split off: the file holds 262,000 lines, and splitting them all
    made 15 MB of short-lived strings in every process that builds a tokenizer.
    """
    raw = resources.files("library.models").joinpath("data").joinpath(BPE_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n", 1 + _NUM_MERGES)
    return [tuple(line.split()) for line in lines[1 : 1 + _NUM_MERGES]]  # type: ignore[misc]


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id in CLIP's order: bytes, bytes + '</w>', merged pairs, then the two specials."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(pair) for pair in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}


OPENCLIP_PAD_TOKEN = "!"  # id 0: OpenCLIP pads with zeros (SD2's and SDXL's second tokenizer, as diffusers ships them)


@functools.lru_cache(maxsize=2)
def _build_tokenizer(pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    merges = read_bpe_merges()
    vocab = build_vocab(merges)
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=MODEL_MAX_LENGTH,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=pad_token,
    )
    # CLIPTokenizer keeps the Python merge list it was built from (~10 MB of tuples) beside the
    # Rust BPE model that holds its own copy; nothing reads it again (saving serialises the Rust
    # model), and a training process keeps the tokenizer to the end.
    if isinstance(getattr(tokenizer, "_merges", None), list):
        tokenizer._merges = []
    return tokenizer


def load_tokenizer(pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """SD1.x's CLIP tokenizer, built once per process and shared (tokenizers are read-only).

    The vocabulary and merges are the same for OpenAI CLIP and OpenCLIP; only the padding
    differs: pass `OPENCLIP_PAD_TOKEN` for an OpenCLIP text encoder (SD2, SDXL's second).
    """
    return _build_tokenizer(pad_token)


def family_tokenizers(architecture: str) -> tuple[CLIPTokenizer, CLIPTokenizer | None]:
    """(tokenizer, tokenizer_2) of a model family: SD1 pads with EOS; SD2's OpenCLIP pads with
    zeros; SDXL has CLIP ViT-L's (EOS padding) and OpenCLIP bigG's (zero padding)."""
    if architecture == "sd2":
        return load_tokenizer(OPENCLIP_PAD_TOKEN), None
    if architecture == "sdxl":
        return load_tokenizer(), load_tokenizer(OPENCLIP_PAD_TOKEN)
    return load_tokenizer(), None
