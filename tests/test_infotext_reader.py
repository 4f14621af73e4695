"""parse_parameters reads infotext as A1111's parse_generation_parameters does, and inverts our writer."""
from __future__ import annotations

import pytest
from PIL import Image

from library.errors import SamplingError
from library.sampling.infotext import (
    format_infotext,
    parse_parameters,
    read_png_parameters,
    save_png,
)

# The example in A1111's parse_generation_parameters docstring (modules/infotext_utils.py).
A1111_DOC = (
    "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, "
    "by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
    "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn "
    "face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"
)


def test_a1111_docstring_example():
    p = parse_parameters(A1111_DOC)
    assert p["Prompt"].startswith("girl with an artist's beret") and p["Prompt"].endswith("detailed, intricate")
    assert p["Negative prompt"].startswith("ugly, fat") and p["Negative prompt"].endswith("messy drawing")
    assert (p["Steps"], p["Sampler"], p["CFG scale"], p["Seed"]) == ("20", "Euler a", "7", "965400086")
    assert (p["Size-1"], p["Size-2"], p["Model hash"]) == ("512", "512", "45dee52b")
    assert p["Clip skip"] == "1"  # absent means A1111's default


def test_quoted_values_with_commas_colons_and_quotes():
    text = ('a cat\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1, Size: 768x512, '
            'Lora hashes: "style: 0123456789ab, other: ba9876543210", Hires upscale: 2, '
            'Hires resize: 1024x768, Note: "say \\"hi\\", ok", Version: v1.9.4')
    p = parse_parameters(text)
    assert p["Prompt"] == "a cat" and p["Negative prompt"] == ""
    assert p["Lora hashes"] == "style: 0123456789ab, other: ba9876543210"
    assert p["Note"] == 'say "hi", ok'
    assert p["Schedule type"] == "Karras" and p["CFG scale"] == "7.5"
    assert (p["Hires resize-1"], p["Hires resize-2"]) == ("1024", "768")
    assert (p["Size-1"], p["Size-2"]) == ("768", "512")
    assert p["Version"] == "v1.9.4"


def test_last_line_with_fewer_than_three_pairs_is_prompt_text():
    p = parse_parameters("a photo\nstyle: watercolor, mood: calm")
    assert p["Prompt"] == "a photo\nstyle: watercolor, mood: calm"
    assert "style" not in p and "mood" not in p


def test_multiline_prompt_and_negative():
    text = "line one\nline two\nNegative prompt: bad\nworse\nSteps: 5, Sampler: Euler, CFG scale: 3, Seed: 2, Size: 64x64"
    p = parse_parameters(text)
    assert p["Prompt"] == "line one\nline two"
    assert p["Negative prompt"] == "bad\nworse"


@pytest.mark.parametrize("value", ["plain", "a, b", "k: v", 'with "quotes"', "x: 1, y: \"2\"", "ünï, cödé"])
def test_round_trip_through_our_writer(value):
    params = {"Steps": 20, "Sampler": "Euler a", "CFG scale": "7", "Seed": 5, "Size": "512x768",
              "Lora hashes": value, "Clip skip": 2, "Version": "lorasmith"}
    text = format_infotext("a (red:1.2) cube, <lora:x:0.5>", "blurry, [low quality]", params)
    p = parse_parameters(text)
    assert p["Prompt"] == "a (red:1.2) cube, <lora:x:0.5>"
    assert p["Negative prompt"] == "blurry, [low quality]"
    assert p["Lora hashes"] == value
    assert {k: p[k] for k in ("Steps", "Sampler", "CFG scale", "Seed", "Size", "Clip skip")} == {
        "Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "5", "Size": "512x768", "Clip skip": "2"}
    assert (p["Size-1"], p["Size-2"]) == ("512", "768")


def test_read_png_parameters(tmp_path):
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "a.png", A1111_DOC)
    assert read_png_parameters(path) == A1111_DOC
    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare)
    with pytest.raises(SamplingError, match="bare.png: the image has no generation parameters"):
        read_png_parameters(bare)
    with pytest.raises(SamplingError, match="missing.png: no such file"):
        read_png_parameters(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(SamplingError, match="junk.png: cannot be read"):
        read_png_parameters(junk)
