"""Vision-language captioning through AutoProcessor/AutoModelForImageTextToText with a tiny BLIP built here."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from test_dataset_tools_captions import _tiny_blip  # tests/ is on sys.path under pytest

from dataset_tools.vlm import load_vlm, vlm_caption_folder, vlm_captioner
from library.cli import main
from library.errors import DatasetError, ModelLoadError

VOCAB = {"a", "photo", "of", "woman", "man", "dog", "red", "the"}


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vlm") / "blip"
    _tiny_blip(folder)
    return folder


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    src = tmp_path / "photos"
    src.mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        Image.new("RGB", (24, 24), colour).save(src / f"{i}.png")
    (src / "2.txt").write_text("keep me\n")
    return src


def test_prompt_continues_the_caption(blip_dir, photos, tmp_path):
    dst = tmp_path / "out"
    run = vlm_caption_folder(photos, dst, blip_dir, prompt="a photo of", prefix="ohwx woman", batch_size=2,
                             max_new_tokens=3, num_beams=1, caption_extension=".txt", progress=False)
    assert sorted(p.name for p in run.written) == ["0.txt", "1.txt"]
    assert (dst / "2.txt").read_text() == "keep me\n"  # had its own caption
    for name in ("0.txt", "1.txt"):
        text = (dst / name).read_text().strip()
        # The prompt is kept as the start of the caption (a random tiny model may add only [UNK]s).
        assert text.startswith("ohwx woman, a photo of"), text
        assert set(text.removeprefix("ohwx woman, a photo of").split()) <= VOCAB, text


def test_generation_is_deterministic_and_matches_direct_generate(blip_dir):
    import torch

    processor, model = load_vlm(blip_dir)
    picture = Image.new("RGB", (24, 24), (255, 0, 0))
    first = vlm_captioner(processor, model, max_new_tokens=4, num_beams=1)([picture])
    inputs = processor(images=[picture], return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=4, min_new_tokens=1, num_beams=1, do_sample=False)
    assert first == [" ".join(processor.batch_decode(ids, skip_special_tokens=True)[0].split())]
    assert first == vlm_captioner(processor, model, max_new_tokens=4, num_beams=1)([picture])
    assert first[0] and set(first[0].split()) <= VOCAB
    prompted = vlm_captioner(processor, model, prompt="the dog", max_new_tokens=4, num_beams=1)([picture])
    assert prompted[0].startswith("the dog")


def test_chat_style_needs_a_chat_template_and_bad_inputs_are_named(blip_dir, photos, tmp_path):
    with pytest.raises(ModelLoadError, match="no chat template"):
        vlm_caption_folder(photos, tmp_path / "o", blip_dir, style="chat", progress=False)
    with pytest.raises(DatasetError, match="unknown prompt style"):
        vlm_caption_folder(photos, tmp_path / "o", blip_dir, style="poem", progress=False)
    with pytest.raises(ModelLoadError, match="no vision-language model"):
        vlm_caption_folder(photos, tmp_path / "o", tmp_path / "missing", progress=False)


def test_cli_caption_vlm_in_place_keeps_existing(blip_dir, photos):
    code = main(["dataset", "caption", "vlm", str(photos), str(photos), "--in_place", "--model", str(blip_dir),
                 "--max_new_tokens", "3", "--num_beams", "1", "--trigger", "ohwx", "--caption_extension", ".txt",
                 "--no_progress"])
    assert code == 0
    assert (photos / "2.txt").read_text() == "keep me\n"
    assert (photos / "0.txt").read_text().startswith("ohwx, ")
