"""Memory housekeeping around CPU training steps: keep freed blocks (glibc), pause the cyclic GC.

glibc hands blocks above 128 KB straight back to the kernel when they are freed and
trims the heap top when it grows past twice that; the next step asks for the same
sizes again and every page is faulted in anew. A training step frees and re-allocates
the same activations every time, so on the tiny model this costs ~9,000 page faults
and 15-25 ms a step. Raising both thresholds makes freed blocks reusable; the peak
stays what the step needs, because that memory is in use at the peak anyway.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import platform
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024

_applied = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; False where there is no glibc."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    except (OSError, AttributeError):
        return False
    _applied = ok
    return ok


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the duration (a training step).

    A step creates and frees thousands of Python tensor objects; the collector's
    generation-0 passes they trigger cost 1.5% of a tiny-model step (in-process A/B).
    Tensors are freed by reference counting either way; cycles made during the step are
    collected by the first pass after it. Leaves a collector the caller had disabled alone.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
