"""Crop and resize tools on synthetic images whose interesting region is known."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from dataset_tools.crop import (
    CropOptions,
    HaarFaceDetector,
    crop_box,
    crop_folder,
    parse_focus,
    parse_ratio,
)
from dataset_tools.images import load_image, resize_short_side, scan_folder
from dataset_tools.resize import ResizeOptions, parse_size, resize_folder
from library.errors import DatasetError


def _square_image(path: Path, size=(300, 100), square=(200, 0, 300, 100), color=(255, 0, 0)) -> None:
    img = Image.new("RGB", size, (0, 0, 255))
    ImageDraw.Draw(img).rectangle([square[0], square[1], square[2] - 1, square[3] - 1], fill=color)
    img.save(path)


def _face_image(path: Path, centre=(550, 300), size=250, canvas=(800, 600)) -> None:
    """A drawn, blurred face (oval, eyes, brows, nose, mouth) that the frontal Haar cascade detects."""
    img = Image.new("L", canvas, 90)
    d = ImageDraw.Draw(img)
    s, x0, y0 = size, centre[0] - size // 2, centre[1] - size // 2
    d.ellipse([x0 + s * 0.1, y0, x0 + s * 0.9, y0 + s * 1.1], fill=200)
    for ex in (0.33, 0.67):
        d.ellipse([x0 + s * (ex - 0.09), y0 + s * 0.35, x0 + s * (ex + 0.09), y0 + s * 0.45], fill=40)
        d.rectangle([x0 + s * (ex - 0.12), y0 + s * 0.27, x0 + s * (ex + 0.12), y0 + s * 0.30], fill=60)
    d.polygon([(x0 + s * 0.5, y0 + s * 0.45), (x0 + s * 0.44, y0 + s * 0.65), (x0 + s * 0.56, y0 + s * 0.65)], fill=170)
    d.ellipse([x0 + s * 0.36, y0 + s * 0.75, x0 + s * 0.64, y0 + s * 0.83], fill=70)
    img.filter(ImageFilter.GaussianBlur(s / 60)).convert("RGB").save(path)


def test_crop_box_geometry():
    assert crop_box(300, 100, (1, 1)) == (100, 0, 200, 100)
    assert crop_box(300, 100, (1, 1), (1.0, 0.5)) == (200, 0, 300, 100)  # clamped at the right border
    assert crop_box(300, 100, (1, 1), (0.0, 0.5)) == (0, 0, 100, 100)
    assert crop_box(100, 400, (1, 1), (0.5, 0.1)) == (0, 0, 100, 100)
    assert crop_box(400, 400, (2, 3)) == (66, 0, 333, 400)  # 267 wide = round(400*2/3), left = round(66.5)
    assert crop_box(600, 300, (16, 9)) == (34, 0, 567, 300)


def test_parse_ratio_and_focus_errors():
    assert parse_ratio("2:3") == (2, 3) and parse_ratio("16x9") == (16, 9)
    with pytest.raises(DatasetError):
        parse_ratio("wide")
    assert parse_focus("0.25,0.75") == (0.25, 0.75)
    with pytest.raises(DatasetError, match="between 0 and 1"):
        parse_focus("1.5,0.5")


def test_centre_focus_and_sidecar_crop(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    _square_image(src / "a.png")  # red square on the right third
    _square_image(src / "b.png")
    (src / "b.focus").write_text("# subject on the right\n0.9,0.5\n")
    run = crop_folder(src, dst, CropOptions(focus=(0.5, 0.5)), progress=False)
    assert sorted(p.name for p in run.written) == ["a.png", "b.png"]
    a = np.asarray(Image.open(dst / "a.png"))
    b = np.asarray(Image.open(dst / "b.png"))
    assert a.shape == b.shape == (100, 100, 3)
    assert (a[..., 2] == 255).all()  # centre crop: all blue
    assert (b[..., 0] == 255).all()  # the sidecar moved the crop onto the red square
    # --focus for the whole folder does the same for images without a sidecar.
    run = crop_folder(src, tmp_path / "dst2", CropOptions(focus=(1.0, 0.5)), progress=False)
    assert (np.asarray(Image.open(tmp_path / "dst2" / "a.png"))[..., 0] == 255).all()


def test_exif_rotated_input_is_cropped_upright(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    # Stored 200x100 with the red half on the left; orientation 6 means "rotate 90° clockwise to view",
    # so the upright image is 100x200 with red on top.
    stored = Image.new("RGB", (200, 100), (0, 0, 255))
    ImageDraw.Draw(stored).rectangle([0, 0, 99, 99], fill=(255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(src / "phone.jpg", exif=exif, quality=100)
    upright = load_image(src / "phone.jpg")
    assert upright.size == (100, 200)
    run = crop_folder(src, tmp_path / "dst", CropOptions(focus=(0.5, 0.0)), progress=False)
    out = np.asarray(Image.open(run.written[0])).astype(int)
    assert out.shape == (100, 100, 3)
    assert out[..., 0].mean() > 240 and out[..., 2].mean() < 15  # the top (red) square


def test_face_aware_crop_with_haar_cascade(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _face_image(src / "face.png", centre=(600, 300), size=250)
    Image.new("RGB", (800, 600), (128, 128, 128)).save(src / "blank.png")
    run = crop_folder(src, tmp_path / "dst", CropOptions(face=True, size=200), progress=False)
    assert len(run.written) == 2
    # The face centre (600,300) in an 800x600 image: the 600x600 crop is clamped to x in [200,800].
    face_out = Image.open(tmp_path / "dst" / "face.png")
    assert face_out.size == (200, 200)
    expected = Image.open(src / "face.png").crop((200, 0, 800, 600)).resize((200, 200), Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(face_out, float) - np.asarray(expected, float)).mean() < 1.0
    centred = Image.open(src / "face.png").crop((100, 0, 700, 600)).resize((200, 200), Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(face_out, float) - np.asarray(centred, float)).mean() > 5.0
    boxes = HaarFaceDetector()(Image.open(src / "face.png"))
    assert boxes and abs((boxes[0][0] + boxes[0][2]) / 2 - 600) < 30
    assert run.notes == ["blank.png: no face found, cropped around the focus point (0.5, 0.5)"]


def test_face_detector_path_uses_largest_face(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _square_image(src / "x.png", size=(400, 100), square=(0, 0, 100, 100))
    small, large = (300, 0, 320, 20), (0, 0, 90, 90)  # the largest face is on the left
    run = crop_folder(src, tmp_path / "dst", CropOptions(face=True), detector=lambda img: [small, large],
                      progress=False)
    out = np.asarray(Image.open(run.written[0]))
    assert (out[..., 0] == 255).all() and not run.notes


def test_resize_short_side_never_upscales_unless_asked(tmp_path):
    img = Image.new("RGB", (300, 200))
    assert resize_short_side(img, 100).size == (150, 100)
    assert resize_short_side(img, 400) is None
    assert resize_short_side(img, 400, upscale=True).size == (600, 400)
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (1000, 800)).save(src / "big.png")
    Image.new("RGB", (300, 200)).save(src / "small.png")
    run = crop_folder(src, tmp_path / "dst", CropOptions(size=512), progress=False)
    assert Image.open(tmp_path / "dst" / "big.png").size == (512, 512)
    assert Image.open(tmp_path / "dst" / "small.png").size == (200, 200)
    assert len(run.too_small) == 1 and "small.png" in run.too_small[0]


def test_bad_inputs_listed_and_rerun_idempotent(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (64, 64)).save(src / "ok.png")
    Image.new("RGB", (64, 64)).save(src / "ok.jpg")  # same stem, other format
    full = src / "full.jpg"
    Image.new("RGB", (256, 256), (10, 200, 30)).save(full)
    (src / "truncated.jpg").write_bytes(full.read_bytes()[:400])
    (src / "notes.md").write_text("not an image")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    dst = tmp_path / "dst"
    run = crop_folder(src, dst, CropOptions(fmt="png"), progress=False)
    assert sorted(p.name for p in run.written) == ["full.png", "ok.png"]
    assert len(run.unreadable) == 1 and str(src / "truncated.jpg") in run.unreadable[0]
    assert run.non_images == [src / "notes.md"]
    assert run.duplicates == ["ok: ok.jpg, ok.png -> using ok.jpg"]
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # sources untouched
    stamp = (dst / "ok.png").stat().st_mtime_ns
    again = crop_folder(src, dst, CropOptions(fmt="png"), progress=False)
    assert again.written == [] and len(again.skipped_existing) == 2
    assert (dst / "ok.png").stat().st_mtime_ns == stamp
    assert len(crop_folder(src, dst, CropOptions(fmt="png", overwrite=True), progress=False).written) == 2
    assert not [p for p in dst.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(DatasetError, match="overlaps"):
        crop_folder(src, src, progress=False)


def test_resize_and_convert(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (1200, 600), (200, 10, 10)).save(src / "wide.png")
    Image.new("RGB", (300, 400)).save(src / "small.jpg")
    Image.new("RGB", (100, 50)).save(src / "old.bmp")
    resize_folder(src, tmp_path / "same", ResizeOptions(max_side=50), progress=False)
    with Image.open(tmp_path / "same" / "old.bmp") as kept, Image.open(tmp_path / "same" / "small.jpg") as jpg:
        assert (kept.format, kept.size, jpg.format, jpg.size) == ("BMP", (50, 25), "JPEG", (38, 50))
    run = resize_folder(src, tmp_path / "a", ResizeOptions(max_side=600, fmt="webp"), progress=False)
    assert sorted(p.name for p in run.written) == ["old.webp", "small.webp", "wide.webp"]
    assert Image.open(tmp_path / "a" / "wide.webp").size == (600, 300)
    assert Image.open(tmp_path / "a" / "small.webp").size == (300, 400)
    run = resize_folder(src, tmp_path / "b", ResizeOptions(exact=parse_size("512x512"), fmt="jpg"), progress=False)
    assert Image.open(tmp_path / "b" / "wide.jpg").size == (512, 512)
    assert Image.open(tmp_path / "b" / "small.jpg").size == (300, 400) and len(run.too_small) == 2
    assert parse_size("768") == (768, 768)
    assert [p.name for p in scan_folder(tmp_path / "b").images] == ["old.jpg", "small.jpg", "wide.jpg"]
