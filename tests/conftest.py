"""Shared fixtures: real-data paths. Laziness helpers live in :mod:`xfusion.testing`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (real satellite samples); skips where the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real-data samples not found at {SHARED_DATA} (they sit beside the project in CI)"
        )
    return SHARED_DATA


def pytest_xdist_make_scheduler(config, log):
    """Keep each test file on one xdist worker (its module fixtures run once), except notebooks.

    pyproject's addopts ask for ``--dist loadfile``; this scheduler is loadfile with one
    exception: the notebooks are independent of each other and among the longest tests, so each
    is its own unit and they spread over the workers. (``--dist loadgroup`` with
    ``xdist_group`` marks stopped grouping under pytest 9.2: xdist rewrites node ids that
    pytest no longer reads, and every module fixture ran once per worker.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if path.endswith("test_notebooks.py") else path

    return FileScheduling(config, log)
