"""`lorasmith dataset …` end to end through library.cli.main: photos -> crop -> captions -> folders -> report."""
from __future__ import annotations

import json

from PIL import Image

from library.cli import main


def test_dataset_commands_chain(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("RGB", (900, 600), (i * 60, 90, 20)).save(photos / f"p{i}.jpg")
    (photos / "readme.md").write_text("x")
    (photos / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    cropped = tmp_path / "cropped"
    code = main(["dataset", "crop", str(photos), str(cropped), "--size", "512", "--format", "png", "--no_progress"])
    out = capsys.readouterr().out
    assert code == 1  # bad.png could not be read, and says so by path
    assert "written: 3" in out and str(photos / "bad.png") in out and "readme.md" in out
    assert Image.open(cropped / "p0.png").size == (512, 512)

    code = main(["dataset", "caption", "create", str(cropped), str(cropped), "--in_place", "--text",
                 "photo", "--caption_extension", ".txt", "--no_progress"])
    assert code == 0
    code = main(["dataset", "caption", "edit", str(cropped), str(cropped), "--in_place", "--prefix", "ohwx woman",
                 "--caption_extension", ".txt", "--no_progress"])
    assert code == 0 and (cropped / "p1.txt").read_text() == "ohwx woman, photo\n"
    capsys.readouterr()
    assert main(["dataset", "caption", "freq", str(cropped), "--caption_extension", ".txt", "--json"]) == 0
    freq = json.loads(capsys.readouterr().out)
    assert freq["tags"] == [{"tag": "ohwx woman", "count": 3}, {"tag": "photo", "count": 3}]

    project = tmp_path / "project"
    assert main(["dataset", "prepare", str(cropped), str(project), "--instance_prompt", "ohwx",
                 "--class_prompt", "woman", "--repeats", "100", "--no_progress"]) == 0
    assert (project / "img" / "100_ohwx woman" / "p2.txt").is_file()
    capsys.readouterr()
    assert main(["dataset", "report", str(project / "img"), "--resolution", "512", "--enable_bucket",
                 "--train_batch_size", "3", "--max_train_epochs", "10", "--caption_extension", ".txt", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plan"]["steps_per_epoch"] == 100 and report["plan"]["total_steps"] == 1000  # 300 items / 3
    assert report["folders"][0]["captioned"] == 3
    assert [img["bucket"] for img in report["images"]] == [[512, 512]] * 3

    assert main(["dataset", "crop", str(photos), str(photos), "--no_progress"]) == 2  # refused, not a traceback
    assert "overlaps" in capsys.readouterr().err
