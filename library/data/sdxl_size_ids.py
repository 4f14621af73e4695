"""SDXL size/crop conditioning ("micro-conditioning", Podell et al. 2023, SDXL §2.2) as sd-scripts computes it.

SDXL's UNet takes six numbers per image besides the text: `original_size` (h, w),
`crop_coords_top_left` (top, left) and `target_size` (h, w). sd-scripts derives them from
each image's bucket: the original size is the image file's size before resizing, the crop
is the offset of the image fitted (whole, aspect kept) and centred in the bucket, floored
(sd-scripts' `get_crop_ltrb`, which it describes as matching Stability AI's preprocessing),
mirrored when the image is flipped, and
the target is the bucket resolution. Pure functions so the numbers can be checked by hand.
"""
from __future__ import annotations

import math


def crop_ltrb(bucket_reso: tuple[int, int], image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the image fitted into the bucket, both given as (width, height)."""
    bucket_w, bucket_h = bucket_reso
    image_ar = image_size[0] / image_size[1]
    if bucket_w / bucket_h > image_ar:  # bucket is wider: match the height
        resized_w, resized_h = bucket_h * image_ar, float(bucket_h)
    else:
        resized_w, resized_h = float(bucket_w), bucket_w / image_ar
    left = math.floor((bucket_w - resized_w) / 2)
    top = math.floor((bucket_h - resized_h) / 2)
    return left, top, left + resized_w, top + resized_h


def size_crop_ids(image_size: tuple[int, int], bucket_reso: tuple[int, int],
                  flipped: bool = False) -> tuple[int, int, int, int, int, int]:
    """The six SDXL time ids: original (h, w), crop (top, left), target (h, w).

    `image_size` is the source image's (width, height) before any resize; `bucket_reso` the
    bucket's (width, height). A horizontally flipped image reports its left as the bucket
    width minus the unflipped right edge, as sd-scripts does for flip augmentation.
    """
    left, top, right, _ = crop_ltrb(bucket_reso, image_size)
    if flipped:
        left = bucket_reso[0] - right
    return (int(image_size[1]), int(image_size[0]), int(top), int(left),
            int(bucket_reso[1]), int(bucket_reso[0]))
