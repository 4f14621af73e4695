"""Shared test fixtures: paths to tests/fixtures (other tools' files) and small generated datasets."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """tests/fixtures: files from other tools (sd-scripts, the seed guide), copied into the repo so a
    fresh clone runs every test; ../shared/fixtures, beside the repo, is the reference copy."""
    return FIXTURES


@pytest.fixture(scope="session")
def sdscripts_lora_dir(shared_fixtures: Path) -> Path:
    return shared_fixtures / "sdscripts_lora_tiny"


@pytest.fixture(scope="session")
def seed_guide_dir(shared_fixtures: Path) -> Path:
    return shared_fixtures / "seed_guide"


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread: the tiny models are overhead-bound, and two threads on a
    busy 2-core machine wait on each other (20x slower seen on shared CI boxes)."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `1_ohwx shape` folder of 4 generated images (2 square, 2 wide) with .txt captions.

    Module-scoped: a test module may write caches into it without touching another's.
    """
    from library.world.bucket_dataset import make_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(root, count=4)
    (root / "10_ohwx shape").rename(root / "1_ohwx shape")
    return root
