"""Moved to library.data.sdxl_size_ids (shared with the epoch scorer); re-exported for old imports."""
from library.data.sdxl_size_ids import crop_ltrb, size_crop_ids  # noqa: F401
