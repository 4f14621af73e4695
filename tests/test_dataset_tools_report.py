"""Dataset report on a crafted dataset: numbers checked against library.data's own step math."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from PIL import Image

from dataset_tools.report import build_report, format_report, guide_warnings
from library.config import default_config
from library.data.balance import balance_reg_repeats, batches_in_bucket


def _images(folder: Path, sizes: list[tuple[int, int]], caption_every: int = 0) -> None:
    folder.mkdir(parents=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (i % 255, 0, 0)).save(folder / f"{i:03d}.png")
        if caption_every and i % caption_every == 0:
            (folder / f"{i:03d}.txt").write_text(f"ohwx woman, photo {i}\n")


def _seed_guide_like(tmp_path: Path) -> tuple[Path, Path]:
    """22 training images × 15 repeats = 330 image-repeats (as in the guide's run) and 330 reg photos."""
    train, reg = tmp_path / "img", tmp_path / "reg"
    _images(train / "15_ohwx woman", [(800, 800)] * 20 + [(600, 900)] * 2, caption_every=2)
    (train / "15_ohwx woman" / "notes.md").write_text("not an image")
    _images(reg / "1_woman", [(64, 64)] * 330)
    return train, reg


def _config(reg: Path | None, **changes):
    values = {"resolution": "768", "enable_bucket": True, "train_batch_size": 3, "max_train_epochs": 10,
                  "caption_extension": ".txt", "reg_data_dir": str(reg) if reg else None}
    values.update(changes)
    return dataclasses.replace(default_config(), **values)


def test_report_matches_library_step_math(tmp_path):
    train, reg = _seed_guide_like(tmp_path)
    report = build_report(train, _config(reg))
    # By hand with library.data's primitives: 300 square items + 330 reg items share the 768x768 bucket,
    # the 2 portrait images (aspect 0.667) land in 640x896 (aspect 0.714, the nearest) × 15 repeats.
    reg_used = sum(balance_reg_repeats(330, [1] * 330))
    assert reg_used == 330
    batches = batches_in_bucket(300 + reg_used, 3) + batches_in_bucket(30, 3)
    assert batches == 220  # the guide's 220 steps per epoch
    assert report.plan.steps_per_epoch == batches and report.plan.total_steps == 10 * batches
    train_row = next(f for f in report.folders if not f.is_reg)
    assert (train_row.images, train_row.repeats, train_row.items) == (22, 15, 330)
    assert (train_row.square, train_row.portrait, train_row.landscape) == (20, 2, 0)
    assert train_row.captioned == 11 and train_row.below_resolution == 2  # 600 < 768 on the short side
    assert train_row.non_images == ["notes.md"]
    portrait = [r for r in report.images if r.width == 600]
    assert {tuple(r.bucket) for r in portrait} == {(640, 896)}
    reg_row = next(f for f in report.folders if f.is_reg)
    assert reg_row.below_resolution == 330 and reg_row.items == 330
    assert report.guide_warnings == ["2 training image(s) are not 1:1; the guide crops to 1:1 (lorasmith dataset crop)"]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["plan"]["steps_per_epoch"] == 220 and len(data["images"]) == 352
    text = format_report(report)
    assert "optimizer steps per epoch:                   220" in text and "640x896 x15" in text


def test_report_without_reg_and_unused_reg(tmp_path):
    train = tmp_path / "img"
    _images(train / "2_ohwx woman", [(512, 512)] * 4)
    (train / "2_ohwx woman" / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    (train / "no_repeats").mkdir()
    _images(tmp_path / "reg" / "1_woman", [(512, 512)] * 12)
    report = build_report(train, _config(None, enable_bucket=False, train_batch_size=1, max_train_epochs=2))
    assert report.plan.steps_per_epoch == 8 and report.plan.total_steps == 16
    assert len(report.plan.skipped) == 2  # listed by path, not fatal
    assert any("zz_truncated.png" in s for s in report.plan.skipped)
    assert any("no_repeats" in s for s in report.plan.skipped)
    assert report.guide_warnings == [
        "4 training images; the guide uses 10–50 (the person-LoRA guide InfluxOW/Stable-Diffusion-Text-To-Person: "
        "fewer overfit a few poses, more add little; add or drop photos)",
        "no regularization images; the guide uses 8 (images × repeats) real class photos",
        "8 image-repeats per epoch (images × repeats); the guide aims for 300–600 (change repeats)",
    ]
    with_reg = build_report(train, _config(tmp_path / "reg", enable_bucket=False, train_batch_size=1))
    unused = [r for r in with_reg.images if r.folder == "1_woman" and r.bucket is None]
    assert len(unused) == 4  # balancing uses 8 of the 12 reg images
    assert with_reg.plan.steps_per_epoch == 16


def test_guide_warnings_few_reg():
    from dataset_tools.report import FolderSummary

    def row(is_reg, images, repeats):
        return FolderSummary("f", "p", is_reg, images, repeats, images * repeats, 0, images, 0, 0, 0, [1, 1], [1, 1])

    warnings = guide_warnings([row(False, 20, 20), row(True, 100, 1)])
    assert warnings == [
        "100 regularization images for 400 images × repeats; the guide uses at least 400",
        "400 image-repeats per epoch is above the 100 regularization images, so reg images repeat",
    ]
