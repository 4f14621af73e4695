"""Reg sets from real photos (counts, determinism, resume, too-few warning) and `reg check` balancing."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from regularization.check import check_balance
from regularization.real import reg_from_photos, selection_order, training_items


def _photos(folder: Path, n: int, size=(300, 200)) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", size, (i * 7 % 255, 50, 90)).save(folder / f"class_{i:03d}.jpg")


def _train(root: Path, folders: dict[str, int]) -> Path:
    for name, n in folders.items():
        _photos(root / name, n, size=(64, 64))
    return root


def test_training_items_uses_library_counts(tmp_path):
    train = _train(tmp_path / "img", {"3_ohwx woman": 4, "2_ohwx man": 5})
    assert training_items(train) == 3 * 4 + 2 * 5


def test_selection_is_deterministic_and_counts(tmp_path):
    pool = tmp_path / "pool"
    _photos(pool, 30)
    Image.new("RGB", (100, 100)).save(pool / "class_small.png")  # too small for 128x128
    (pool / "class_broken.jpg").write_bytes(b"\xff\xd8\xff nope")
    (pool / "list.csv").write_text("a,b")
    a = reg_from_photos(pool, tmp_path / "a", "woman", needed=12, resolution=(128, 128), seed=7, progress=False)
    b = reg_from_photos(pool, tmp_path / "b", "woman", needed=12, resolution=(128, 128), seed=7, progress=False)
    c = reg_from_photos(pool, tmp_path / "c", "woman", needed=12, resolution=(128, 128), seed=8, progress=False)
    assert a.folder == tmp_path / "a" / "1_woman"
    assert len(a.selected) == 12 and len(list(a.folder.iterdir())) == 12
    assert [p.name for p in a.selected] == [p.name for p in b.selected]
    assert [p.name for p in a.selected] != [p.name for p in c.selected]
    order = [p for p in selection_order(list(pool.glob("class_*")), 7)]
    picked = [p for p in order if p.name not in ("class_small.png", "class_broken.jpg")][:12]
    assert [p.name for p in a.selected] == [p.name for p in picked]
    assert {Image.open(p).size for p in a.folder.iterdir()} == {(128, 128)}
    assert a.run.non_images == [pool / "list.csv"]
    assert not a.warnings
    # Resume: the same seed picks the same photos, writes nothing new.
    again = reg_from_photos(pool, tmp_path / "a", "woman", needed=12, resolution=(128, 128), seed=7, progress=False)
    assert again.run.written == [] and len(again.run.skipped_existing) == 12


def test_too_few_photos_warns(tmp_path):
    pool = tmp_path / "pool"
    _photos(pool, 5)
    result = reg_from_photos(pool, tmp_path / "reg", "woman", needed=8, resolution=(192, 128), repeats=2,
                             progress=False)
    assert result.folder.name == "2_woman" and len(result.selected) == 5
    assert {Image.open(p).size for p in result.folder.iterdir()} == {(192, 128)}
    assert result.warnings and "only 5 usable photos" in result.warnings[0] and "add 3 more" in result.warnings[0]


def test_check_balance_in_sd_scripts_terms(tmp_path):
    train = _train(tmp_path / "img", {"3_ohwx woman": 4})  # 12 image-repeats
    _photos(tmp_path / "reg_many" / "1_woman", 20, size=(64, 64))
    _photos(tmp_path / "reg_few" / "1_woman", 5, size=(64, 64))
    many = check_balance(train, tmp_path / "reg_many")
    assert (many.train_items, many.reg_images, many.used, many.unused, many.repeated) == (12, 20, 12, 8, 0)
    assert many.balanced and many.verdict.startswith("balanced: 12 reg images are used once")
    assert [i.repeats for i in many.images] == [1] * 12 + [0] * 8  # registered in name order
    few = check_balance(train, tmp_path / "reg_few")
    # Balancing: first pass 5, then round-robin +1 until 12 -> repeats 3,3,2,2,2.
    assert [i.repeats for i in few.images] == [3, 3, 2, 2, 2]
    assert not few.balanced and few.repeated == 5 and few.max_repeats == 3 and few.reg_items == 12
    assert "add 7 images" in few.verdict


def test_reg_cli_photos_and_check(tmp_path, capsys):
    from library.cli import main

    train = _train(tmp_path / "img", {"2_ohwx woman": 3})  # 6 image-repeats
    pool = tmp_path / "pool"
    _photos(pool, 10)
    code = main(["reg", "photos", str(pool), str(tmp_path / "reg"), "--class_prompt", "woman",
                 "--train_data_dir", str(train), "--resolution", "128", "--seed", "3", "--no_progress"])
    out = capsys.readouterr().out
    assert code == 0 and "6 of 6 reg images" in out
    assert len(list((tmp_path / "reg" / "1_woman").iterdir())) == 6
    assert main(["reg", "check", str(train), str(tmp_path / "reg"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["train_items"], data["used"], data["balanced"]) == (6, 6, True)
    _photos(tmp_path / "reg2" / "1_woman", 2, size=(64, 64))
    assert main(["reg", "check", str(train), str(tmp_path / "reg2")]) == 1  # too few: repeated
    assert "too few" in capsys.readouterr().out
