"""The shapes world: determinism, captions that match labels, the held-back star, the concept folder."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from library.errors import ConfigError
from library.world.generator import (ALL_SHAPES, BACKGROUNDS, COLOURS, HELD_BACK_SHAPE, SIZES, WORLD_SHAPES,
                                     Scene, generate_world, render, write_concept_folder)
from library.world.shapes import SHAPES, star


@pytest.fixture(scope="module")
def world():
    return generate_world(300, seed=5)


def test_same_seed_same_world_and_slices_regenerate(world):
    again = generate_world(300, seed=5)
    assert np.array_equal(world.images, again.images)
    assert world.captions == again.captions
    part = generate_world(10, seed=5, start=120)
    assert np.array_equal(part.images, world.images[120:130])
    assert part.captions == world.captions[120:130]
    other = generate_world(20, seed=6)
    assert not np.array_equal(other.images, world.images[:20])


def test_images_are_64px_rgb_uint8_and_varied(world):
    assert world.images.shape == (300, 64, 64, 3) and world.images.dtype == np.uint8
    assert len({(s, c, b) for s, c, b in zip(world.shape, world.colour, world.background)}) > 30
    assert set(world.size.tolist()) == {0, 1}


def test_captions_say_what_the_labels_say(world):
    colours, sizes = tuple(COLOURS), tuple(SIZES)
    with_background = 0
    for i, text in enumerate(world.captions):
        assert text.startswith("a ")
        assert f"{colours[world.colour[i]]} {ALL_SHAPES[world.shape[i]]}" in text
        if " on a " in text:
            with_background += 1
            assert text.endswith(f" on a {BACKGROUNDS[world.background[i]]} background")
        other_size = sizes[1 - world.size[i]]
        assert f" {other_size} " not in text
    assert 0.5 < with_background / len(world) < 0.9  # the background phrase is dropped ~30% of the time


def test_held_back_star_never_appears_in_the_pretraining_world(world):
    assert HELD_BACK_SHAPE not in WORLD_SHAPES and HELD_BACK_SHAPE in ALL_SHAPES
    big = generate_world(1500, seed=0)
    assert ALL_SHAPES.index(HELD_BACK_SHAPE) not in set(big.shape.tolist())
    assert not any("star" in c for c in big.captions)
    assert set(big.shape.tolist()) == {ALL_SHAPES.index(s) for s in WORLD_SHAPES}


def test_pixels_have_the_shape_colour_at_the_centre_and_background_in_the_corner():
    scene = Scene("square", "blue", "white", "large", 32.0, 32.0, 18.0, COLOURS["blue"], ("h", 30))
    img = render(scene).astype(int)
    assert tuple(img[32, 32]) == COLOURS["blue"]
    assert tuple(img[0, 0]) == (240, 240, 240)
    ring = render(Scene("ring", "red", "black", "large", 32.0, 32.0, 18.0, COLOURS["red"], ("h", 30)))
    assert tuple(ring[32, 32]) == (25, 25, 25)  # the ring's hole shows the background
    assert tuple(ring[32, 32 + 14]) == COLOURS["red"]


def test_star_mask_has_points_and_notches():
    y, x = np.mgrid[0:64, 0:64] + 0.5
    mask = star(x, y, 32.0, 32.0, 20.0)
    assert mask[32, 32] and mask[12, 32]  # centre and the upper point (radius 22 reaches y=10)
    assert not mask[17, 25]  # between the top point and the upper-left point: a notch
    areas = {name: SHAPES[name](x, y, 32.0, 32.0, 16.0).sum() for name in ALL_SHAPES}
    assert max(areas.values()) < 4 * min(areas.values())  # one size class looks about equally big


def test_concept_folder_holds_blue_stars_with_token_captions(tmp_path):
    folder = write_concept_folder(tmp_path, n=4, seed=1)
    assert folder.name == "10_ohwx shape"
    pngs = sorted(folder.glob("*.png"))
    assert [p.stem for p in pngs] == ["000", "001", "002", "003"]
    for p in pngs:
        assert p.with_suffix(".txt").read_text() == "ohwx shape\n"
        img = np.asarray(Image.open(p).convert("RGB")).astype(int)
        assert img.shape == (64, 64, 3)
        blue = (np.abs(img - np.array(COLOURS["blue"])).sum(axis=2) < 40).mean()
        assert 0.03 < blue < 0.5
    again = write_concept_folder(tmp_path / "b", n=4, seed=1)
    assert (again / "002.png").read_bytes() == (folder / "002.png").read_bytes()


def test_concept_colour_must_be_a_world_colour(tmp_path):
    with pytest.raises(ConfigError, match="purple"):
        write_concept_folder(tmp_path, n=1, colour="purple")
