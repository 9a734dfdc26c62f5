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
