"""Textual-inversion embeddings: A1111's file formats read weights-only, slots in chunks, vectors in the encoder."""
from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from library.errors import SamplingError
from library.models import build_tiny_bundle
from library.sampling.conditioning import PromptEncoder
from library.sampling.embeddings import (
    embeddings_for_bundle,
    load_embeddings,
    read_embedding_file,
    ti_hashes,
)
from library.sampling.prompt_parser import tokenize_prompt

WIDTH = 32  # the tiny model's text encoder


@pytest.fixture(scope="module")
def bundle():
    return build_tiny_bundle(0)


def _pt(path, vectors):
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(vectors)},
                "name": path.stem, "step": 100, "sd_checkpoint": None, "sd_checkpoint_name": None}, path)
    return path


def _vectors(n, seed):
    return torch.randn(n, WIDTH, generator=torch.Generator().manual_seed(seed))


def test_formats(tmp_path):
    a = read_embedding_file(_pt(tmp_path / "EasyNeg.pt", _vectors(3, 0)))
    assert (a.name, a.count) == ("EasyNeg", 3) and torch.equal(a.for_width(WIDTH), _vectors(3, 0))
    save_file({"emb_params": _vectors(2, 1)}, tmp_path / "kohya.safetensors")
    b = read_embedding_file(tmp_path / "kohya.safetensors")
    assert b.count == 2 and torch.equal(b.for_width(WIDTH), _vectors(2, 1))
    torch.save({"<cat-toy>": _vectors(1, 2)[0]}, tmp_path / "concept.bin")  # diffusers concept: one 1-D vector
    c = read_embedding_file(tmp_path / "concept.bin")
    assert c.count == 1 and c.for_width(WIDTH).shape == (1, WIDTH)
    save_file({"clip_l": torch.zeros(4, 768), "clip_g": torch.ones(4, 1280)}, tmp_path / "xl.safetensors")
    d = read_embedding_file(tmp_path / "xl.safetensors")
    assert d.count == 4 and d.for_width(768).shape == (4, 768) and float(d.for_width(1280).mean()) == 1.0
    assert d.for_width(WIDTH) is None


def test_not_an_embedding(tmp_path):
    save_file({"a": torch.zeros(1, 4), "b": torch.zeros(1, 4)}, tmp_path / "two.safetensors")
    with pytest.raises(SamplingError, match="two.safetensors: not a textual-inversion embedding"):
        read_embedding_file(tmp_path / "two.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SamplingError, match="junk.pt: cannot be read as weights only"):
        read_embedding_file(tmp_path / "junk.pt")


class _Payload:
    """Unpickling this calls os.system: what a malicious .pt embedding would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_does_not_execute(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"string_to_param": {"*": _Payload(marker)}}, path)
    with pytest.raises(SamplingError, match="evil.pt: cannot be read as weights only"):
        read_embedding_file(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pt"  # a plain pickle, not a torch zip
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(SamplingError, match="raw.pt"):
        load_embeddings(tmp_path, (WIDTH,))
    assert not marker.exists()


def test_folder_widths_and_subfolders(tmp_path):
    (tmp_path / "sub").mkdir()
    _pt(tmp_path / "sub" / "deep.pt", _vectors(1, 3))
    _pt(tmp_path / "wide.pt", torch.zeros(1, 768))
    save_file({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, tmp_path / "xl.safetensors")
    db = load_embeddings(tmp_path, (WIDTH,))
    assert sorted(db.embeddings) == ["deep"] and sorted(db.skipped) == ["wide", "xl"]
    assert sorted(load_embeddings(tmp_path, (768, 1280)).embeddings) == ["xl"]  # SDXL takes the clip_l/clip_g pair
    assert sorted(load_embeddings(tmp_path, (768,)).embeddings) == ["wide"]
    with pytest.raises(SamplingError, match="no such folder"):
        load_embeddings(tmp_path / "missing", (WIDTH,))


def test_slots_weights_and_chunk_boundary(tmp_path, bundle):
    _pt(tmp_path / "myemb.pt", _vectors(3, 4))
    db = embeddings_for_bundle(bundle, tmp_path)
    tok = bundle.tokenizer
    chunks = tokenize_prompt(tok, "a photo, (MyEmb:1.3) cube", db)
    assert len(chunks) == 1
    ids = tok("a photo,", add_special_tokens=False)["input_ids"]
    (offset, emb), = chunks[0].fixes
    assert offset == len(ids) and emb.name == "myemb"
    assert chunks[0].tokens[1 + offset:1 + offset + 3] == [0, 0, 0]
    assert chunks[0].weights[1 + offset:1 + offset + 3] == [1.3, 1.3, 1.3]
    # 73 one-token words, then the 3-vector embedding: 73 + 3 > 75, so it opens the next chunk whole
    chunks = tokenize_prompt(tok, "cube " * 73 + "myemb", db)
    assert len(chunks) == 2 and chunks[0].fixes == [] and chunks[1].fixes[0][0] == 0
    assert chunks[0].tokens[74] == tok.eos_token_id  # chunk 1 padded after its 73 words
    # without the database the name is plain text
    assert tokenize_prompt(tok, "myemb", None)[0].fixes == []


def test_vectors_replace_the_token_embeddings(tmp_path, bundle):
    """An embedding's vector gives what the encoder gives for a token whose table row is that vector."""
    tok, te = bundle.tokenizer, bundle.text_encoder
    vec = _vectors(1, 5)
    _pt(tmp_path / "myemb.pt", vec)
    encoder = PromptEncoder(tok, te)
    encoder.use_embeddings(embeddings_for_bundle(bundle, tmp_path))
    with_embedding = encoder.encode("a (myemb:1.2) cube", None).clone()
    plain = encoder.encode("a (dog:1.2) cube", None)
    assert not torch.allclose(with_embedding, plain)
    dog = tok("dog", add_special_tokens=False)["input_ids"][0]
    table = te.get_input_embeddings().weight
    saved = table.data[dog].clone()
    try:
        table.data[dog] = vec[0]
        reference = PromptEncoder(tok, te).encode("a (dog:1.2) cube", None)
    finally:
        table.data[dog] = saved
    torch.testing.assert_close(with_embedding, reference, rtol=0, atol=1e-6)


def test_ti_hashes_in_infotext(tmp_path, bundle):
    from library.sampling.infotext import parse_parameters
    from library.sampling.pipeline import SampleRequest, SamplingSession

    pos = _pt(tmp_path / "good,style.pt", _vectors(2, 6))
    neg = _pt(tmp_path / "EasyNegative.pt", _vectors(1, 7))
    session = SamplingSession(bundle)
    out = session.generate(SampleRequest("a cube, good,style", negative_prompt="(easynegative:1.2), blurry",
                                         steps=1, width=32, height=32, seed=1, embeddings_dir=str(tmp_path)))
    params = parse_parameters(out[0].parameters)
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in (pos, neg)}
    assert params["TI hashes"] == f"goodstyle: {sha[pos]}, EasyNegative: {sha[neg]}"
    assert out[0].parameters.index("Lora hashes" if "Lora hashes" in out[0].parameters else "TI hashes") \
        < out[0].parameters.index("Version")
    plain = session.generate(SampleRequest("a cube", steps=1, width=32, height=32, seed=1,
                                           embeddings_dir=str(tmp_path)))
    assert "TI hashes" not in plain[0].parameters


def test_ti_hashes_lists_each_once(tmp_path):
    a = read_embedding_file(_pt(tmp_path / "a.pt", _vectors(1, 8)))
    b = read_embedding_file(_pt(tmp_path / "b.pt", _vectors(1, 9)))
    assert ti_hashes([a], [b, a]) == f"a: {a.shorthash}, b: {b.shorthash}"
    assert ti_hashes([], []) is None


def test_cli_embeddings_dir(tmp_path):
    from PIL import Image

    from library.cli import main

    _pt(tmp_path / "neg.pt", _vectors(2, 10))
    out = tmp_path / "out"
    assert main(["sample", "--pretrained_model_name_or_path", "tiny", "--prompt", "a cube", "--negative_prompt",
                 "neg", "--embeddings_dir", str(tmp_path), "--steps", "1", "--width", "32", "--height", "32",
                 "--seed", "3", "--output_dir", str(out)]) == 0
    with Image.open(next(out.glob("*.png"))) as png:
        assert 'TI hashes: "neg: ' in png.text["parameters"]  # quoted: the value holds a colon


def test_comma_backtrack_moves_embedding_slots_with_their_fix():
    from library.sampling.prompt_parser import chunk_tokens

    class Fake:
        name, count = "e", 2

    emb = Fake()
    comma = 9
    runs = [([1] * 70 + [comma, 2, emb, 5, 6], 1.0)]
    first, second = chunk_tokens(runs, bos=100, eos=101, comma=comma)
    # 70 ones, comma (70), 2 (71), slots 72-73, 5 (74): full; 6 arrives, the comma is 4 back -> cut after it
    assert first.tokens[1:72] == [1] * 70 + [comma] and first.fixes == []
    assert second.tokens[1:6] == [2, 0, 0, 5, 6] and second.fixes == [(1, emb)]


def test_embedding_names(tmp_path):
    from library.sampling.embeddings import embedding_names

    (tmp_path / "sub").mkdir()
    (tmp_path / "b.pt").write_bytes(b"")
    (tmp_path / "sub" / "A.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert embedding_names(tmp_path) == ["A", "b"] and embedding_names(tmp_path / "missing") == []
