"""Moved to library.data.text_conditioning (the epoch scorer needs it and may not import library.training).

Re-exported so imports of the old path keep working.
"""
from library.data.text_conditioning import (  # noqa: F401
    NPZ_SUFFIX,
    Conditioning,
    TextCache,
    TextEncoding,
    encode_sdxl,
    eos_pool,
    join_windows,
    sdxl_time_ids,
)
