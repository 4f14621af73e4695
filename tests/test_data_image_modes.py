"""Every image mode read right, upright, alpha on a chosen background, huge images refused (issue 23).

Images are built in the test. Before the fix a 16-bit greyscale PNG trained as solid white, an EXIF-rotated
photo trained sideways, a transparent background trained black and a 144-megapixel PNG was decoded whole.
"""
from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from library.config import TrainConfig, spec_named
from library.config_validate import validate
from library.data.folders import check_image
from library.data.images import ImageOptions, image_size, item_pixels, load_rgb, open_image, to_rgb
from library.data.latent_cache import LatentRequest, expected_metadata
from library.data.prepare import prepare_data
from library.data.specs import DEFAULT_MAX_PIXELS, image_options
from library.errors import ConfigError, DatasetError


def gradient16(path: Path) -> Path:
    """A 256x8 16-bit greyscale PNG whose columns run from 0 to 65535."""
    row = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16)
    Image.fromarray(np.tile(row, (8, 1))).save(path)
    assert Image.open(path).mode == "I;16"
    return path


def rotated_jpeg(path: Path, orientation: int = 6) -> Path:
    """Stored 64x32 landscape, left half red, right half blue, with an EXIF orientation tag."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    return path


def transparent_png(path: Path, mode: str = "RGBA") -> Path:
    """Black, fully transparent border around an opaque red centre (what convert('RGB') turns black)."""
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = (255, 0, 0, 255)
    img = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        img = img.convert("LA")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
        transparent = img.getpixel((0, 0))
        img.info["transparency"] = transparent
        img.save(path, transparency=transparent)
        return path
    img.save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but whose data is a few bytes: decoding it would fail."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_16_bit_greyscale_keeps_its_gradient(tmp_path) -> None:
    rgb = load_rgb(gradient16(tmp_path / "g16.png"))
    assert rgb.shape == (8, 256, 3) and rgb.dtype == np.uint8
    row = rgb[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row) >= 0)
    assert np.abs(row - np.arange(256)).max() <= 1  # scaled, not clipped to white
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_exif_rotated_jpeg_is_read_upright_everywhere(tmp_path) -> None:
    path = rotated_jpeg(tmp_path / "phone.jpg")
    rgb = load_rgb(path)
    assert rgb.shape == (64, 32, 3)  # portrait after orientation 6
    assert rgb[4, 16, 0] > 200 and rgb[4, 16, 2] < 60  # red on top
    assert rgb[60, 16, 2] > 200 and rgb[60, 16, 0] < 60  # blue below
    assert image_size(path) == (32, 64)
    assert check_image(path) == ((32, 64), None)  # buckets see the upright size


def test_rotated_photo_trains_upright(tmp_path) -> None:
    folder = tmp_path / "data" / "1_ohwx"
    folder.mkdir(parents=True)
    rotated_jpeg(folder / "phone.jpg")
    prepared = prepare_data(TrainConfig(train_data_dir=str(tmp_path / "data"), resolution="128", enable_bucket=True,
                                        min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=64))
    item = prepared.layouts[0].items[0]
    assert item.image.size == (32, 64) and item.bucket[0] < item.bucket[1]  # a portrait bucket
    pixels = item_pixels(item.image.path, item.bucket, item.resized_size)
    assert pixels.shape[1] > pixels.shape[2]
    top, bottom = pixels[:, 2, :].mean(dim=1), pixels[:, -3, :].mean(dim=1)
    assert top[0] > 0.5 and top[2] < -0.5 and bottom[2] > 0.5 and bottom[0] < -0.5


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_background_is_white_by_default(tmp_path, mode) -> None:
    rgb = load_rgb(transparent_png(tmp_path / f"t_{mode}.png", mode))
    assert tuple(rgb[0, 0]) == (255, 255, 255), tuple(rgb[0, 0])
    assert rgb[8, 8].tolist() != [255, 255, 255]  # the opaque centre stays


def test_alpha_background_is_the_users_choice(tmp_path) -> None:
    path = transparent_png(tmp_path / "t.png")
    for text, want in (("black", (0, 0, 0)), ("#00ff00", (0, 255, 0)), ("gray", (128, 128, 128))):
        options = image_options(TrainConfig(alpha_background=text))
        assert tuple(load_rgb(path, options)[0, 0]) == want
        assert tuple(load_rgb(path, options)[8, 8]) == (255, 0, 0)
    with pytest.raises(ConfigError, match="alpha_background: 'no-such-colour' is not a colour"):
        validate(TrainConfig(alpha_background="no-such-colour"), for_training=False)
    assert "White by default" in spec_named("alpha_background").help
    rgb, alpha = to_rgb(Image.open(path), ImageOptions(alpha_mask=True))  # the hook keeps alpha for a masked loss
    assert alpha is not None and alpha.getpixel((0, 0)) == 0 and alpha.getpixel((8, 8)) == 255


def test_alpha_background_reaches_training_pixels(tmp_path) -> None:
    folder = tmp_path / "data" / "1_ohwx"
    folder.mkdir(parents=True)
    transparent_png(folder / "t.png")
    prepared = prepare_data(TrainConfig(train_data_dir=str(tmp_path / "data"), resolution="64", alpha_background="black"))
    spec = prepared.layouts[0].subsets[0].spec
    assert spec.image.background == (0, 0, 0)
    item = prepared.layouts[0].items[0]
    assert float(item_pixels(item.image.path, item.bucket, item.resized_size, options=spec.image)[:, 0, 0].max()) == -1.0


@pytest.mark.parametrize("mode,expect", [("CMYK", (255, 255, 255)), ("1", (255, 255, 255)), ("L", (200, 200, 200)),
                                         ("I", (200, 200, 200)), ("F", (200, 200, 200)), ("I;16B", (0, 0, 0))])
def test_other_modes_become_8_bit_rgb(tmp_path, mode, expect) -> None:
    if mode == "CMYK":
        img = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    elif mode == "1":
        img = Image.new("1", (4, 4), 1)
    elif mode == "I;16B":
        img = Image.new("I;16B", (4, 4), 0)
    else:
        img = Image.new(mode, (4, 4), 200)
    rgb, _ = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == expect


def test_16_bit_I_mode_is_scaled(tmp_path) -> None:
    img = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32), "I")
    assert [to_rgb(img)[0].getpixel((x, 0))[0] for x in range(3)] == [0, 127, 255]


def test_huge_image_is_refused_by_name_without_decoding(tmp_path, monkeypatch) -> None:
    path = png_header_only(tmp_path / "scan.png", 12000, 12000)  # 144 megapixels
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a refused image"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw DecompressionBombWarning either
        with pytest.raises(DatasetError, match=r"scan.png: image is 12000x12000 = 144.0 megapixels, above the limit of 89.5"):
            load_rgb(path)
        size, problem = check_image(path)
    assert size is None and "144.0 megapixels" in problem and "--max_image_pixels" in problem
    monkeypatch.undo()
    with pytest.raises(DatasetError, match="cannot read image"):  # past a raised cap it is decoded (and is broken)
        load_rgb(path, ImageOptions(max_pixels=200_000_000))


def test_image_beyond_pillows_hard_limit_is_named(tmp_path) -> None:
    path = png_header_only(tmp_path / "bomb.png", 20000, 20000)  # 400 Mpx: Pillow itself refuses in open()
    with pytest.raises(DatasetError, match="bomb.png"):
        load_rgb(path)
    assert check_image(path)[0] is None


def test_pixel_limit_option() -> None:
    assert spec_named("max_image_pixels").min == 1
    assert TrainConfig().max_image_pixels == DEFAULT_MAX_PIXELS
    assert image_options(TrainConfig(max_image_pixels=5)).max_pixels == 5
    with pytest.raises(ConfigError, match="max_image_pixels"):
        validate(TrainConfig(max_image_pixels=0), for_training=False)


def test_small_limit_refuses_in_the_dataset_scan(tmp_path) -> None:
    folder = tmp_path / "data" / "1_ohwx"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(folder / "a.png")
    with pytest.raises(DatasetError, match="above the limit"):
        prepare_data(TrainConfig(train_data_dir=str(tmp_path / "data"), resolution="64", max_image_pixels=1000))


def test_latent_cache_key_includes_the_background() -> None:
    a = LatentRequest(0, Path("x.png"), (64, 64), (64, 64))
    b = LatentRequest(0, Path("x.png"), (64, 64), (64, 64), options=ImageOptions(background=(0, 0, 0)))
    assert expected_metadata("s", "v", a, False) != expected_metadata("s", "v", b, False)
    assert expected_metadata("s", "v", a, False)["format"] == "lorasmith-latents-2"


def test_other_readers_share_the_loader(tmp_path) -> None:
    """dataset tools, regularization sets (through dataset_tools.load_image) and img2img init images."""
    from dataset_tools.images import load_image
    from library.sampling.cli import load_init_images

    g16 = gradient16(tmp_path / "g16.png")
    assert np.asarray(load_image(g16))[0, 0, 0] == 0 and np.asarray(load_image(g16))[0, -1, 0] == 255
    init = load_init_images(transparent_png(tmp_path / "t.png"))
    assert init[0].mode == "RGB" and init[0].getpixel((0, 0)) == (255, 255, 255)
    assert open_image(rotated_jpeg(tmp_path / "r.jpg")).size == (32, 64)


def _seed_images() -> list[bytes]:
    import io

    out = []
    for build in (lambda: Image.fromarray(np.tile((np.arange(16, dtype=np.uint32) * 4000).astype(np.uint16), (4, 1))),
                  lambda: Image.new("RGBA", (8, 8), (255, 0, 0, 0)),
                  lambda: Image.new("P", (8, 8), 1)):
        buf = io.BytesIO()
        build().save(buf, "PNG")
        out.append(buf.getvalue())
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (16, 8), (0, 0, 255)).save(buf, "JPEG", exif=exif.tobytes())
    out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


def test_fuzz_image_reader_raises_only_our_errors(tmp_path_factory) -> None:
    """Mutated PNG/JPEG bytes (16-bit, alpha, palette, EXIF): the reader returns 8-bit RGB or a DatasetError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    folder = tmp_path_factory.mktemp("imgfuzz")

    @st.composite
    def mutated(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(SEEDS)))
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data[: draw(st.integers(8, len(data)))])

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(mutated(), st.sampled_from([".png", ".jpg"]))
    def run(data: bytes, suffix: str) -> None:
        path = folder / f"f{suffix}"
        path.write_bytes(data)
        try:
            rgb = load_rgb(path, ImageOptions(max_pixels=4_000_000))
        except DatasetError:
            pass
        else:
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        size, problem = check_image(path, ImageOptions(max_pixels=4_000_000))
        assert (size is None) != (problem is None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run()
