"""Textual-inversion embeddings in prompts, as AUTOMATIC1111 uses them (EasyNegative-style files).

Why: the seed guide's negative prompts name embedding files; without them the name would reach
the text encoder as ordinary words. Facts followed (A1111 modules/textual_inversion and
sd_hijack_clip):
- Files in `--embeddings_dir` (subfolders too): `.pt`/`.bin` with `string_to_param` (A1111's
  own format; one term), `.safetensors`/`.bin` with a single tensor (`emb_params` as sd-scripts
  writes it, diffusers concepts `{"<token>": tensor}`), and SDXL's `clip_l` + `clip_g` pair.
  An embedding's name is its file name without extension; the prompt finds it by the tokens
  of that name (so case does not matter: CLIP's tokenizer lower-cases).
- `.pt`/`.bin` files are pickles: they are read with `torch.load(weights_only=True)`, which
  builds tensors and plain containers only, so a file carrying code fails to load instead of
  running it (library.errors.SamplingError naming the file).
- An embedding of n vectors takes n token slots, with the emphasis weight of the text around
  it; it never straddles two 75-token chunks (a chunk is closed first when it would not fit).
  The vectors replace the token embeddings at those slots before the transformer runs.
- Embeddings whose width fits none of the model's text encoders are skipped, as A1111 skips
  them (an SDXL clip_l/clip_g file on SD1.5 is used for clip_l only when SDXL's path asks for it).
- Infotext `TI hashes: "name: 0123456789ab, ..."`: first 12 hex of the file's SHA-256, name with
  ':' and ',' removed, positive prompt's embeddings first, then the negative prompt's.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from library.errors import SamplingError

EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors")
PLACEHOLDER_TOKEN = 0  # A1111 fills an embedding's slots with token 0, then swaps in the vectors


@dataclass(eq=False)
class Embedding:
    """One textual-inversion embedding: (n, width) vectors, or per-encoder vectors for SDXL."""

    name: str
    path: Path
    vectors: dict[str, torch.Tensor]  # "" for single-encoder files; "clip_l"/"clip_g" for SDXL
    count: int  # vectors (token slots) it takes

    def for_width(self, width: int) -> torch.Tensor | None:
        """The vectors for a text encoder whose token embeddings are `width` wide (None: not usable there)."""
        for vec in self.vectors.values():
            if vec.shape[-1] == width:
                return vec
        return None

    @property
    def shorthash(self) -> str:
        return file_sha256(str(self.path), self.path.stat().st_mtime_ns)[:12]


@lru_cache(maxsize=256)
def file_sha256(path: str, mtime_ns: int) -> str:
    """SHA-256 of a whole file (A1111's hashes.sha256, which TI hashes use); cached per modification time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _as_matrix(value, path: Path, key: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise SamplingError(f"embedding {path}: {key} is a {type(value).__name__}, not a tensor",
                            ["an embedding file holds its vectors as one tensor (n, width)"])
    vec = value.detach().float().cpu()
    if vec.ndim == 1:
        vec = vec.unsqueeze(0)
    if vec.ndim != 2 or vec.shape[0] < 1:
        raise SamplingError(f"embedding {path}: {key} has shape {tuple(value.shape)}, not (vectors, width)")
    return vec


def read_embedding_file(path: str | os.PathLike[str]) -> Embedding:
    """Load one embedding file safely (weights only); a clear error for anything that is not one."""
    path = Path(path)
    name = path.stem
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader failure becomes one message naming the file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SamplingError(f"embedding {path}: cannot be read as weights only ({reason})", [
            "embedding files are loaded without running code: a .pt that stores Python objects or code is refused",
            "re-save it as .safetensors, or remove it from --embeddings_dir"]) from None
    if not isinstance(data, dict):
        raise SamplingError(f"embedding {path}: holds a {type(data).__name__}, not an embedding dict")
    if "string_to_param" in data:  # A1111's own .pt
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise SamplingError(f"embedding {path}: string_to_param must hold exactly one term",
                                [f"found {len(params) if isinstance(params, dict) else type(params).__name__}"])
        vec = _as_matrix(next(iter(params.values())), path, "string_to_param")
        return Embedding(name, path, {"": vec}, vec.shape[0])
    if "clip_l" in data and "clip_g" in data:  # SDXL: one set of vectors per text encoder
        vecs = {k: _as_matrix(data[k], path, k) for k in ("clip_l", "clip_g")}
        if vecs["clip_l"].shape[0] != vecs["clip_g"].shape[0]:
            raise SamplingError(f"embedding {path}: clip_l has {vecs['clip_l'].shape[0]} vectors, "
                                f"clip_g {vecs['clip_g'].shape[0]}")
        return Embedding(name, path, vecs, vecs["clip_g"].shape[0])
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1 and len(data) == 1:  # emb_params (sd-scripts), diffusers concepts {"<token>": tensor}
        key, value = next(iter(tensors.items()))
        vec = _as_matrix(value, path, key)
        return Embedding(name, path, {"": vec}, vec.shape[0])
    raise SamplingError(f"embedding {path}: not a textual-inversion embedding", [
        f"keys: {', '.join(map(str, list(data)[:8]))}",
        "expected string_to_param (A1111 .pt), one tensor such as emb_params (.safetensors), or clip_l + clip_g (SDXL)"])


@dataclass
class EmbeddingDatabase:
    """The usable embeddings of a folder, looked up by their names' token ids (A1111's ids_lookup)."""

    folder: Path
    embeddings: dict[str, Embedding] = field(default_factory=dict)
    skipped: dict[str, Embedding] = field(default_factory=dict)  # width fits no text encoder of the model
    _lookup: dict[int, list[tuple[list[int], Embedding]]] = field(default_factory=dict)

    def index(self, tokenizer) -> None:
        """Token ids of every name, longest first per first token (a longer name wins at a position)."""
        self._lookup = {}
        for emb in self.embeddings.values():
            ids = list(tokenizer(emb.name, add_special_tokens=False, truncation=False)["input_ids"])
            if ids:
                self._lookup.setdefault(ids[0], []).append((ids, emb))
        for entries in self._lookup.values():
            entries.sort(key=lambda item: -len(item[0]))

    def find_at(self, tokens: Sequence[int], position: int) -> tuple[Embedding | None, int]:
        for ids, emb in self._lookup.get(tokens[position], ()):
            if list(tokens[position:position + len(ids)]) == ids:
                return emb, len(ids)
        return None, 0

    def substitute(self, tokens: Sequence[int]) -> list:
        """Token ids with every embedding's name replaced by the Embedding (chunk_tokens gives it its slots)."""
        out: list = []
        i = 0
        while i < len(tokens):
            emb, length = self.find_at(tokens, i)
            if emb is None:
                out.append(tokens[i])
                i += 1
            else:
                out.append(emb)
                i += length
        return out


def load_embeddings(folder: str | os.PathLike[str], widths: Iterable[int]) -> EmbeddingDatabase:
    """Every embedding file under `folder` usable with text encoders of these token widths.

    The first file of a name (sorted paths) is used; every unreadable file is reported at once.
    """
    root = Path(os.path.expanduser(str(folder)))
    if not root.is_dir():
        raise SamplingError(f"--embeddings_dir {root}: no such folder",
                            ["give the folder holding the .pt/.safetensors embedding files (A1111's embeddings/)"])
    widths = tuple(widths)
    db = EmbeddingDatabase(root)
    problems = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES):
        if path.stem in db.embeddings or path.stem in db.skipped:
            continue
        try:
            emb = _cached_read(str(path), path.stat().st_mtime_ns)
        except SamplingError as exc:
            problems.append(str(exc).split("\n")[0])
            continue
        (db.embeddings if usable_with(emb, widths) else db.skipped)[emb.name] = emb
    if problems:
        raise SamplingError(f"--embeddings_dir {root}: {len(problems)} file(s) cannot be used", problems)
    return db


def embedding_names(folder: str | os.PathLike[str]) -> list[str]:
    """Names a prompt can use from a folder (file names without extension), sorted; [] for no folder.

    For pickers (the GUI's Generate tab): nothing is loaded, so it is cheap on every refresh.
    """
    root = Path(os.path.expanduser(str(folder)))
    if not root.is_dir():
        return []
    return sorted({p.stem for p in root.rglob("*") if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES},
                  key=str.lower)


def usable_with(emb: Embedding, widths: Sequence[int]) -> bool:
    """A1111's shape check: an SD1/SD2 file on a one-encoder model of its width; clip_l + clip_g on SDXL."""
    if "" in emb.vectors:
        return len(widths) == 1 and emb.vectors[""].shape[-1] == widths[0]
    return sorted(v.shape[-1] for v in emb.vectors.values()) == sorted(widths)


@lru_cache(maxsize=512)
def _cached_read(path: str, mtime_ns: int) -> Embedding:
    return read_embedding_file(path)


def text_encoder_widths(bundle) -> tuple[int, ...]:
    """Token-embedding widths of a bundle's text encoders (768 for SD1.5; 768 and 1280 for SDXL)."""
    encoders = [bundle.text_encoder, getattr(bundle, "text_encoder_2", None)]
    return tuple(token_embedding_module(te).embedding_dim for te in encoders if te is not None)


def embeddings_for_bundle(bundle, folder: str | os.PathLike[str] | None) -> EmbeddingDatabase | None:
    """The folder's embeddings usable with this model, indexed with its tokenizer (None without a folder)."""
    if folder is None:
        return None
    db = load_embeddings(folder, text_encoder_widths(bundle))
    db.index(bundle.tokenizer)
    return db


def signature(db: EmbeddingDatabase | None) -> tuple:
    """What identifies a database's contents: names, files and their modification times."""
    if db is None:
        return ()
    return tuple(sorted((n, str(e.path), e.path.stat().st_mtime_ns) for n, e in db.embeddings.items()))


def embeddings_in_text(tokenizer, db: EmbeddingDatabase, text: str) -> list[Embedding]:
    """The embeddings a prompt text uses, in order of first use (for TI hashes)."""
    from library.sampling.prompt_parser import BREAK, parse_prompt_attention

    found: dict[str, Embedding] = {}
    for run, weight in parse_prompt_attention(text):
        if run == BREAK and weight == -1.0:
            continue
        ids = tokenizer(run, add_special_tokens=False, truncation=False)["input_ids"]
        for item in db.substitute(ids):
            if isinstance(item, Embedding):
                found.setdefault(item.name, item)
    return list(found.values())


def ti_hashes(positive: Sequence[Embedding], negative: Sequence[Embedding]) -> str | None:
    """A1111's `TI hashes` value: positive prompt's embeddings, then the negative's not already listed."""
    names: dict[str, str] = {}
    for emb in [*positive, *negative]:
        name = emb.name.replace(":", "").replace(",", "")
        names.setdefault(name, emb.shorthash)
    return ", ".join(f"{n}: {h}" for n, h in names.items()) or None


def token_embedding_module(text_encoder: torch.nn.Module) -> torch.nn.Embedding:
    """The text encoder's token embedding table (CLIPTextModel and OpenCLIP-style encoders in transformers)."""
    getter = getattr(text_encoder, "get_input_embeddings", None)
    module = getter() if getter is not None else None
    if not isinstance(module, torch.nn.Embedding):
        raise SamplingError(f"text encoder {type(text_encoder).__name__}: no token embedding table found",
                            ["textual-inversion embeddings need a CLIP-style text encoder"])
    return module


@contextmanager
def embedding_vectors(text_encoder: torch.nn.Module, fixes: Sequence[Sequence[tuple[int, Embedding]]]
                      ) -> Iterator[None]:
    """While active, row b of a text-encoder call gets fixes[b]'s vectors at slot offset+1 (after BOS).

    A1111's EmbeddingsWithFixes: the placeholder tokens' embeddings are overwritten, positions and
    everything after the embedding layer are the model's own.
    """
    if not any(fixes):
        yield
        return
    table = token_embedding_module(text_encoder)

    def hook(_module, _inputs, output):
        if output.shape[0] != len(fixes):
            return output
        out = output.clone()
        for row, row_fixes in enumerate(fixes):
            for offset, emb in row_fixes:
                vec = emb.for_width(out.shape[-1])
                if vec is None:
                    raise SamplingError(f"embedding {emb.name}: no vectors of width {out.shape[-1]} for this text encoder")
                vec = vec[: out.shape[1] - offset - 1]
                out[row, offset + 1: offset + 1 + vec.shape[0]] = vec.to(out.dtype).to(out.device)
        return out

    handle = table.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
