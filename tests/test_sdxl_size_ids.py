"""SDXL size/crop ids for bucketed, cropped images against hand-computed values (sd-scripts' rules)."""
from __future__ import annotations

from library.data.sdxl_size_ids import crop_ltrb, size_crop_ids


def test_wide_image_in_a_narrower_bucket():
    # 1600x900 (ar 1.777…) into bucket 1216x832 (ar 1.4615): bucket is narrower, so match the width:
    # resized 1216 x 1216/1.777… = 684.0; top = floor((832 - 684) / 2) = 74; left = 0.
    left, top, right, bottom = crop_ltrb((1216, 832), (1600, 900))
    assert (left, top) == (0, 74)
    assert right == 1216 and abs(bottom - (74 + 684.0)) < 1e-9
    assert size_crop_ids((1600, 900), (1216, 832)) == (900, 1600, 74, 0, 832, 1216)


def test_tall_image_in_a_wider_bucket_and_flip():
    # 700x1000 (ar 0.7) into bucket 768x1024 (ar 0.75): bucket is wider, so match the height:
    # resized 1024*0.7 = 716.8 x 1024; left = floor((768 - 716.8) / 2) = floor(25.6) = 25; top 0.
    assert size_crop_ids((700, 1000), (768, 1024)) == (1000, 700, 0, 25, 1024, 768)
    # flipped: left = 768 - (25 + 716.8) = 26.2 -> 26
    assert size_crop_ids((700, 1000), (768, 1024), flipped=True) == (1000, 700, 0, 26, 1024, 768)


def test_exact_aspect_has_no_crop():
    assert size_crop_ids((2048, 2048), (1024, 1024)) == (2048, 2048, 0, 0, 1024, 1024)
