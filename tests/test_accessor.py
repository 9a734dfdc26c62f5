"""The accessor is one-line delegations: ``cube.xf.f(...)`` equals ``xfusion.f(cube, ...)``."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pandas as pd
import xarray as xr

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion import accessor


def _cube(seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    gbox = xf.grid((0, 0, 320, 320), "EPSG:32633", 10)
    data = rng.uniform(0, 1, size=(6, 3, 32, 32)).astype("float32")
    data[:, :, 3:6, 3:6] = np.nan
    qa = rng.choice([0, 1 << 10, 1 << 11, 0], size=(6, 1, 32, 32)).astype("float32")
    return synthetic_cube(
        np.concatenate([data, qa], axis=1),
        ["B04", "B08", "B11", "QA60"],
        times=pd.date_range("2020-01-01", periods=6, freq="MS"),
        grid=gbox,
        chunks={"x": 16, "y": 16},
    )


def test_every_accessor_method_is_a_single_return_statement():
    for cls in (accessor.XFusionAccessor, accessor.XFusionDatasetAccessor):
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if name.startswith("_"):
                continue
            body = ast.parse(inspect.cleandoc("\n" + inspect.getsource(fn))).body[0].body
            assert len(body) == 1 and isinstance(body[0], ast.Return), f"{cls.__name__}.{name}"


def test_accessor_equals_functions():
    cube = _cube()
    xr.testing.assert_identical(
        cube.xf.mask_bits("QA60", "QA60"), xf.mask_bits(cube, "QA60", "QA60")
    )
    xr.testing.assert_identical(cube.xf.mask_range(0.1, 0.9), xf.mask_range(cube, 0.1, 0.9))
    refl = cube.sel(band=["B04", "B08", "B11"])  # scale refuses the flag band QA60
    xr.testing.assert_identical(refl.xf.scale(1e-4, 0.1), xf.scale(refl, 1e-4, 0.1))
    xr.testing.assert_identical(refl.xf.composite("median"), xf.composite(refl, "median"))
    composite = refl.xf.composite("mean")  # composite refuses the flag band QA60 too
    xr.testing.assert_identical(composite.xf.standardize(), xf.standardize(composite))
    xr.testing.assert_identical(cube.xf.index("NDVI"), xf.index(cube, "NDVI"))
    mask = composite.sel(band=["B04"]).isnull()
    xr.testing.assert_identical(mask.xf.dilate(2), xf.dilate(mask, 2))
    xr.testing.assert_identical(composite.xf.lbp(8, 1), xf.lbp(composite, 8, 1))
    coarse = xf.grid((0, 0, 320, 320), "EPSG:32633", 40)
    xr.testing.assert_identical(composite.xf.resample(coarse), xf.resample(composite, coarse))
    ds = refl.to_dataset(name="v")
    xr.testing.assert_identical(ds.xf.scale(2.0), xf.scale(ds, 2.0))
