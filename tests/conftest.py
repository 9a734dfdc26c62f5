"""Shared fixtures: real-data paths and the one synthetic test cube builder.

Laziness helpers live in :mod:`xfusion.testing`. Test files import :func:`synthetic_cube` with
``from tests.conftest import synthetic_cube`` (pytest runs with ``--import-mode=importlib``,
which registers this file as ``tests.conftest``); it is also the ``synthetic_cube`` fixture.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

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


_DIMS = {2: ("y", "x"), 3: ("band", "y", "x"), 4: ("time", "band", "y", "x")}


def synthetic_cube(
    values: Any,
    bands: Sequence[str] | None = None,
    *,
    times: Any = None,
    grid: Any = None,
    res: float = 10.0,
    origin: tuple[float, float] = (0.0, 0.0),
    crs: Any = None,
    coords: Mapping[str, Any] | None = None,
    chunks: Any = None,
    name: str | None = None,
) -> xr.DataArray:
    """A small synthetic cube: ``values`` with the dims, coordinates and CRS of an xfusion cube.

    The one builder of test cubes: each test draws its own ``values`` (so its numbers are its
    own) and this gives them the layout.

    Parameters
    ----------
    values : array-like (numpy or dask)
        ``(y, x)``, ``(band, y, x)`` or ``(time, band, y, x)``.
    bands : sequence of str, optional
        Band names; default ``b0``, ``b1``, ...
    times : sequence of dates, optional
        The ``time`` coordinate (read by :func:`pandas.to_datetime`).
    grid : odc.geo.geobox.GeoBox, optional
        The grid: ``x``/``y`` and the CRS from it (:func:`xfusion.grids.assign_grid`).
    res, origin, crs
        Without ``grid``: pixel coordinates ``y = y0 - res * i`` and ``x = x0 + res * j`` from
        ``origin = (x0, y0)``, and ``crs`` written on ``spatial_ref`` when given.
    coords : mapping, optional
        Further coordinates (e.g. ``{"common_name": ("band", [...])}``).
    chunks : optional
        Chunk the cube (``DataArray.chunk``'s argument; ``{}`` for one chunk).
    name : str, optional
        The DataArray's name.
    """
    dims = _DIMS[np.ndim(values)]
    ny, nx = np.shape(values)[-2:]
    coordinates: dict[str, Any] = {}
    if "band" in dims:
        n_bands = np.shape(values)[-3]
        coordinates["band"] = (
            list(bands) if bands is not None else [f"b{i}" for i in range(n_bands)]
        )
    if times is not None:
        coordinates["time"] = pd.to_datetime(times)
    if grid is None:
        x0, y0 = origin
        coordinates["y"] = y0 - res * np.arange(ny)
        coordinates["x"] = x0 + res * np.arange(nx)
    coordinates.update(coords or {})
    cube = xr.DataArray(values, dims=dims, coords=coordinates, name=name)
    if grid is not None:
        from xfusion.grids import assign_grid

        cube = assign_grid(cube, grid)
    elif crs is not None:
        import rioxarray  # noqa: F401  (the .rio accessor)

        cube = cube.rio.write_crs(crs)
    return cube if chunks is None else cube.chunk(chunks)


@pytest.fixture(name="synthetic_cube")
def synthetic_cube_fixture():
    """:func:`synthetic_cube`, for tests that take it as a fixture."""
    return synthetic_cube


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
