"""Caption tools on a temp folder, and BLIP captioning with a tiny random model built here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from dataset_tools.captions import (
    CaptionEdit,
    caption_from_filename,
    create_captions,
    edit_captions,
    parse_replacements,
    tag_frequency,
)
from library.errors import DatasetError, ModelLoadError


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("woman_red-dress (2).jpg", "b.png", "c.png"):
        Image.new("RGB", (16, 16)).save(src / name)
    (src / "b.caption").write_text("smiling, outdoors, smiling, red dress\n")
    (src / "c.caption").write_text("indoors, red dress\n")
    return src


def test_caption_edit_pure_ops():
    edit = CaptionEdit(prefix="ohwx woman", suffix="photo", add=["sharp"], remove=["blurry"],
                       replace={"girl": "woman"}, dedupe=True)
    assert edit.apply("girl, blurry, smiling, smiling") == "ohwx woman, woman, smiling, sharp, photo"
    # Idempotent: applying again changes nothing.
    assert edit.apply(edit.apply("girl, blurry, smiling")) == edit.apply("girl, blurry, smiling")
    assert CaptionEdit(add=["new"], add_at_start=True).apply("a, b") == "new, a, b"
    assert caption_from_filename("woman_red-dress (2)") == "woman red dress"
    assert caption_from_filename("IMG_0001") == "IMG"
    assert parse_replacements(["girl=woman", " a = b "]) == {"girl": "woman", "a": "b"}
    with pytest.raises(DatasetError):
        parse_replacements(["no-equals"])


def test_create_captions_from_text_and_filename(dataset, tmp_path):
    dst = tmp_path / "dst"
    run = create_captions(dataset, dst, from_filename=True, progress=False)
    assert len(run.written) == 3
    assert (dst / "woman_red-dress (2).caption").read_text() == "woman red dress\n"
    assert (dst / "b.caption").read_text() == "smiling, outdoors, smiling, red dress\n"  # existing kept
    assert (dst / "b.png").is_file()  # images copied so dst is a complete dataset
    run = create_captions(dataset, tmp_path / "d2", text="a photo of ohwx woman", overwrite=True,
                          captions_only=True, progress=False)
    assert (tmp_path / "d2" / "c.caption").read_text() == "a photo of ohwx woman\n"
    assert not (tmp_path / "d2" / "c.png").exists()
    with pytest.raises(DatasetError, match="exactly one"):
        create_captions(dataset, dst, text="x", from_filename=True, progress=False)


def test_edit_captions_to_new_folder_and_in_place(dataset, tmp_path):
    before = {p.name: p.read_bytes() for p in dataset.iterdir()}
    dst = tmp_path / "dst"
    edit = CaptionEdit(prefix="ohwx woman", remove=["outdoors"], dedupe=True)
    run = edit_captions(dataset, dst, edit, progress=False)
    assert (dst / "b.caption").read_text() == "ohwx woman, smiling, red dress\n"
    assert (dst / "woman_red-dress (2).caption").read_text() == "ohwx woman\n"
    assert run.notes == ["woman_red-dress (2).jpg: had no caption, created one"]
    assert {p.name: p.read_bytes() for p in dataset.iterdir()} == before  # source untouched
    again = edit_captions(dataset, dst, edit, progress=False)
    assert again.written == [] and len(again.skipped_existing) == 3
    with pytest.raises(DatasetError, match="overlaps"):
        edit_captions(dataset, dataset, edit, progress=False)
    run = edit_captions(dataset, dataset, CaptionEdit(replace={"red dress": "blue dress"}), in_place=True,
                        progress=False)
    assert (dataset / "c.caption").read_text() == "indoors, blue dress\n"
    assert sorted(p.name for p in run.written) == ["b.caption", "c.caption", "woman_red-dress (2).caption"]
    rerun = edit_captions(dataset, dataset, CaptionEdit(replace={"red dress": "blue dress"}), in_place=True,
                          progress=False)
    assert rerun.written == []  # nothing left to change


def test_tag_frequency(dataset):
    freq = tag_frequency(dataset)
    assert freq.counts == [("red dress", 2), ("indoors", 1), ("outdoors", 1), ("smiling", 1)]
    assert freq.images == 3 and freq.captioned == 2 and freq.missing == ["woman_red-dress (2).jpg"]
    assert freq.to_dict()["tags"][0] == {"tag": "red dress", "count": 2}


def _tiny_blip(folder: Path) -> None:
    """A randomly initialised BLIP with a 13-word BERT vocab, saved like a downloaded model."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipProcessor,
    )
    from transformers.models.blip import BlipImageProcessorPil

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "woman", "man", "dog", "red", "the"]
    vocab = folder.parent / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    config = BlipConfig(
        text_config={"vocab_size": len(words), "hidden_size": 32, "encoder_hidden_size": 32, "intermediate_size": 37,
                         "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 64,
                         "bos_token_id": 2, "sep_token_id": 3, "pad_token_id": 0},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                           "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                              tokenizer=BertTokenizer(str(vocab)))
    processor.save_pretrained(folder)


def test_blip_captioning_with_tiny_local_model(dataset, tmp_path):
    from dataset_tools.blip import blip_caption_folder

    model_dir = tmp_path / "blip"
    _tiny_blip(model_dir)
    dst = tmp_path / "dst"
    run = blip_caption_folder(dataset, dst, model_dir, prefix="ohwx woman", batch_size=2, max_new_tokens=4,
                              num_beams=1, min_new_tokens=1, overwrite=True, progress=False)
    assert len(run.written) == 3
    vocab = {"a", "photo", "of", "woman", "man", "dog", "red", "the", "ohwx"}
    for path in run.written:
        text = path.read_text().strip()
        assert text.startswith("ohwx woman, ")
        assert set(text.replace(",", " ").split()) <= vocab and len(text) > len("ohwx woman, ")
    again = blip_caption_folder(dataset, dst, model_dir, progress=False)
    assert again.written == [] and len(again.skipped_existing) == 3
    with pytest.raises(ModelLoadError, match="no BLIP model"):
        blip_caption_folder(dataset, tmp_path / "x", tmp_path / "missing", progress=False)


def test_search_replace_text_and_regex():
    assert CaptionEdit(substitute={"girl": "woman"}).apply("a girl, girlish smile") == "a woman, womanish smile"
    edit = CaptionEdit(substitute={r"\b(\d+)girls?\b": r"\1woman"}, regex=True, dedupe=True)
    assert edit.apply("1girl, solo, 1girl") == "1woman, solo"
    with pytest.raises(DatasetError, match="bad regular expression"):
        CaptionEdit(substitute={"(unclosed": "x"}, regex=True)
    assert CaptionEdit(substitute={"(unclosed": "x"}).apply("a (unclosed tag") == "a x tag"
    assert parse_replacements([" red =blue"], strip=False) == {" red ": "blue"}


def test_preview_edit_writes_nothing_and_counts_before_after(dataset):
    from dataset_tools.captions import compare_frequencies, preview_edit

    before = {p.name: p.read_bytes() for p in dataset.iterdir()}
    preview = preview_edit(dataset, CaptionEdit(prefix="ohwx", remove=["smiling"], replace={"red dress": "dress"}))
    assert {p.name: p.read_bytes() for p in dataset.iterdir()} == before
    assert preview.changes == [
        ("b.png", "smiling, outdoors, smiling, red dress", "ohwx, outdoors, dress"),
        ("c.png", "indoors, red dress", "ohwx, indoors, dress"),
        ("woman_red-dress (2).jpg", None, "ohwx"),
    ]
    rows = compare_frequencies(preview.before, preview.after)
    assert rows[:3] == [("ohwx", 0, 3), ("dress", 0, 2), ("red dress", 2, 0)]
    assert ("smiling", 1, 0) in rows and ("indoors", 1, 1) in rows and rows[-1] == ("outdoors", 1, 1)
    assert preview.after.captioned == 3 and preview.before.captioned == 2


def test_cli_edit_dry_run_and_freq_compare(dataset, tmp_path, capsys):
    from library.cli import main

    before = {p.name: p.read_bytes() for p in dataset.iterdir()}
    assert main(["dataset", "caption", "edit", str(dataset), str(dataset), "--in_place", "--dry_run",
                 "--search_replace", "red=blue", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "c.png: 'indoors, red dress' -> 'indoors, blue dress'" in out
    assert "woman_red-dress (2).jpg: '(no caption)' -> ''" in out  # edit would create an empty caption
    assert "3 of 3 captions would change; nothing written" in out
    assert "     2      0     -2  red dress" in out and "     0      2     +2  blue dress" in out
    assert {p.name: p.read_bytes() for p in dataset.iterdir()} == before
    dst = tmp_path / "dst"
    assert main(["dataset", "caption", "edit", str(dataset), str(dst), "--search_replace", "red=blue",
                 "--no_progress"]) == 0
    capsys.readouterr()
    assert main(["dataset", "caption", "freq", str(dataset), "--compare", str(dst), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tags"][:2] == [{"tag": "blue dress", "before": 0, "after": 2},
                                  {"tag": "red dress", "before": 2, "after": 0}]
