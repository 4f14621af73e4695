"""keep_freed_memory: after it, re-allocating a freed multi-MB block faults no pages in again."""
from __future__ import annotations

import platform
import resource

import pytest
import torch

from library.training.memory import keep_freed_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_blocks_are_reused_without_page_faults():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent
    for _ in range(20):  # warm: the heap grows to hold the blocks once
        a, b = torch.ones(1 << 20), torch.ones(1 << 20)  # 4 MB each
        del a, b
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        a, b = torch.ones(1 << 20), torch.ones(1 << 20)
        del a, b
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 100  # without it: ~2,000 pages per round trip (40,000 here)


def test_gc_paused_restores_the_callers_setting():
    import gc

    from library.training.memory import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("a failing step")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # the caller's choice stands
    finally:
        gc.enable()
