"""tests/fixtures is the in-repo copy of ../shared/fixtures: every test runs from a clone, and the copy
stays identical to the reference (its README excepted, which says where the files come from)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FIXTURES, REFERENCE_FIXTURES


def _files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def test_fixture_copy_is_in_the_repo(shared_fixtures: Path) -> None:
    """The interop tests read tests/fixtures, not a folder beside the clone, so they never skip."""
    assert shared_fixtures == FIXTURES
    for name in ("sdscripts_lora_tiny/tinylora.safetensors", "sdscripts_lora_tiny/metadata.json",
                 "seed_guide/kohya_ss_final_28DSTABLEBESTVERSION.json", "seed_guide/wildcards/scene.txt",
                 "tiny-sd/unet/config.json", "README.md"):
        assert (FIXTURES / name).is_file(), name


def test_fixture_copy_matches_the_reference() -> None:
    if not REFERENCE_FIXTURES.is_dir():
        pytest.skip(f"reference copy {REFERENCE_FIXTURES} not beside this clone; nothing to compare")
    ours, ref = _files(FIXTURES), _files(REFERENCE_FIXTURES)
    assert sorted(ours) == sorted(ref)
    changed = [n for n in ref if n != "README.md" and ours[n].read_bytes() != ref[n].read_bytes()]
    assert changed == []
