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

    pyproject's addopts ask for ``--dist loadfile``; this scheduler is loadfile with two
    exceptions: the notebooks are independent of each other and among the longest tests, so each
    is its own unit and they spread over the workers; and so is a README block marked slow
    (``xfusion demo --all``: its test id ends in ``-slow``), which runs in a workspace of its
    own. (``--dist loadgroup`` with ``xdist_group`` marks stopped grouping under pytest 9.2:
    xdist rewrites node ids that pytest no longer reads, and every module fixture ran once per
    worker.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if path.endswith("test_notebooks.py") or _own_unit(nodeid) else path

    return FileScheduling(config, log)


#: The longest scheduling units first, longest first (the README's commands, the notebooks, the
#: recipe runs), so the two workers start on them and the short files fill in around them
#: instead of one long file starting last. Everything else keeps its collection order.
LONG_FIRST = (
    "test_readme.py",
    "test_notebooks.py::test_notebook_runs[downscale]",
    "test_recipe_nightlights.py",
    "test_recipe_downscale.py",
    "test_recipe_water.py",
    "test_notebooks.py::test_notebook_runs[nightlights]",
    "test_notebooks.py::test_notebook_runs[water]",
    "test_recipe_cloudmask.py",
    "test_cli.py",
    "test_benchmarks.py",
    "test_predict.py",
    "test_resume.py",
    "test_recipe_builtup.py",
    "test_notebooks.py",
)


def _own_unit(nodeid: str) -> bool:
    return "test_readme.py::" in nodeid and nodeid.endswith("-slow]")


def pytest_collection_modifyitems(config, items):
    """Order the tests so the longest scheduling units come first (:data:`LONG_FIRST`)."""

    def rank(item) -> int:
        if _own_unit(item.nodeid):
            return -1
        name = item.nodeid.split("/")[-1]  # "test_x.py::test_y[...]"
        for i, unit in enumerate(LONG_FIRST):
            if name == unit or (unit.endswith(".py") and name.split("::")[0] == unit):
                return i
        return len(LONG_FIRST)

    items.sort(key=rank)  # stable: within a rank, the collection order
