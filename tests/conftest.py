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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keep each test file on one xdist worker (its module fixtures run once), except notebooks.

    With ``--dist loadgroup`` (pyproject's addopts) a file's tests form one group; the notebooks
    are independent of each other and the longest tests, so they spread over the workers.
    """
    for item in items:
        if item.path.name == "test_notebooks.py" or item.get_closest_marker("xdist_group"):
            continue
        item.add_marker(pytest.mark.xdist_group(item.path.stem))
