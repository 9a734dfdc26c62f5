"""Layers on one grid: one image per layer, the stacked cube, PALSAR dB, the held-out strip."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xfusion.errors import EmptySelectionError, InputError
from xfusion.preprocess.layers import (
    holdout_strip,
    open_layer,
    palsar_db,
    radar_geometry,
    single_image,
    stack_layers,
)
from xfusion.testing import raise_if_dask_computes


def _series(n: int, bands=("a", "b"), seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, len(bands), 6, 5)).astype(np.float32)
    coords = {"time": pd.date_range("2010-01-01", periods=n, freq="7D"), "band": list(bands)}
    return xr.DataArray(values, dims=("time", "band", "y", "x"), coords=coords)


def test_single_image_median_first_only_and_empty():
    series = _series(3)
    np.testing.assert_array_equal(single_image(series).values, np.median(series.values, axis=0))
    first = single_image(series, categorical=True)
    assert first.dims == ("band", "y", "x")
    np.testing.assert_array_equal(first.values, series.values[0])  # labels are never averaged
    np.testing.assert_array_equal(single_image(series.isel(time=[1])).values, series.values[1])
    image = series.isel(time=0, drop=True)
    assert single_image(image) is image
    with pytest.raises(EmptySelectionError, match=r"no image of 'labels\.json' in the date range"):
        single_image(series.isel(time=[]), what="labels.json")


def test_single_image_is_lazy():
    series = _series(3)
    lazy = series.chunk({"time": 1, "y": 3})
    with raise_if_dask_computes():
        out = single_image(lazy)
    assert out.chunks is not None
    np.testing.assert_array_equal(out.values, np.median(series.values, axis=0))


def test_stack_layers_bands_dtype_chunks_and_errors():
    sar = _series(1, ("HH", "HV")).isel(time=0, drop=True).astype(np.float64)
    dem = _series(1, ("DEM",), seed=1).isel(time=0, drop=True)
    cube = stack_layers([sar, dem])
    assert cube.band.values.tolist() == ["HH", "HV", "DEM"] and cube.dtype == np.float32
    np.testing.assert_array_equal(cube.sel(band="DEM").values, dem.values[0])
    lazy_sar = sar.copy(data=da.from_array(sar.values, chunks=(1, 3, 5)))
    with raise_if_dask_computes():
        lazy = stack_layers([lazy_sar, dem.chunk()], {"y": 2, "x": 5})
    assert lazy.chunks == ((3,), (2, 2, 2), (5,))
    np.testing.assert_array_equal(lazy.values, cube.values)
    with pytest.raises(InputError, match="repeat across the layers"):
        stack_layers([sar, sar])
    with pytest.raises(InputError, match="at least one layer"):
        stack_layers([])


def test_palsar_db_formula_and_no_data():
    dn = xr.DataArray(np.array([[0.0, 1.0], [100.0, 5000.0]]), dims=("y", "x")).chunk()
    with raise_if_dask_computes():
        out = palsar_db(dn)
    expected = [[np.nan, -83.0], [10 * np.log10(100.0**2) - 83, 10 * np.log10(5000.0**2) - 83]]
    np.testing.assert_allclose(out.values, expected, rtol=1e-6)
    assert out.dtype == np.float32 and out.attrs["units"] == "dB"


def _ridge(height: float, n: int = 16, at: int = 4) -> xr.DataArray:
    dem = np.zeros((3, n))
    dem[:, at] = height
    return xr.DataArray(dem, dims=("y", "x"), coords={"x": 30.0 * np.arange(n) + 15})


@pytest.mark.parametrize("height", [90.0, 300.0])
def test_radar_geometry_shadow_length_layover_and_incidence(height):
    """Behind a ridge the shadow runs height·tan(incidence) of ground; its front lays over."""
    out = radar_geometry(_ridge(height), incidence=35.0)
    assert out.band.values.tolist() == ["local_incidence", "radar_shadow"]
    assert out.dtype == np.float32 and out.dims == ("band", "y", "x")
    mask = out.sel(band="radar_shadow").values[0]
    shadow = int(np.floor(height * np.tan(np.radians(35.0)) / 30.0))  # 2 px, then 7 px
    expected = np.zeros(16)
    expected[5 : 5 + shadow] = 1.0
    np.testing.assert_array_equal(mask, expected)
    incidence = out.sel(band="local_incidence").values[0]
    slope = np.degrees(np.arctan(height / 60.0))  # centred difference over two pixels
    np.testing.assert_allclose(incidence[[0, 3, 4, 5]], [35.0, 35.0 - slope, 35.0, 35.0 + slope],
                               rtol=1e-5)  # fmt: skip
    assert incidence[3] < 0  # the slope facing the sensor is steeper than 35 degrees: layover
    # looking west, the same ridge casts its shadow to the west
    west = radar_geometry(_ridge(height), look="west").sel(band="radar_shadow").values[0]
    np.testing.assert_array_equal(west, _mirrored(expected, 4))


def _mirrored(mask: np.ndarray, at: int) -> np.ndarray:
    """The mask of a sensor looking the other way: reflected about the ridge's column."""
    out = np.zeros_like(mask)
    for j in np.flatnonzero(mask):
        if 0 <= 2 * at - j < mask.size:
            out[2 * at - j] = 1.0
    return out


def test_radar_geometry_is_lazy_rowwise_and_keeps_nan():
    rng = np.random.default_rng(3)
    dem = np.cumsum(rng.normal(scale=20.0, size=(1, 10, 24)), axis=2)
    dem[0, 2, 5] = np.nan
    cube = xr.DataArray(dem, dims=("band", "y", "x"), coords={"band": ["DEM"],
                        "x": 30.0 * np.arange(24), "y": -30.0 * np.arange(10)})  # fmt: skip
    with raise_if_dask_computes():
        lazy = radar_geometry(cube.chunk({"y": 4, "x": 8}), incidence=40.0)
    assert lazy.chunks == ((2,), (4, 4, 2), (24,))  # whole rows: a shadow runs along them
    eager = radar_geometry(cube, incidence=40.0)
    np.testing.assert_array_equal(lazy.values, eager.values)
    assert np.isnan(eager.values[:, 2, 5]).all() and np.isfinite(eager.values[:, 3]).all()
    np.testing.assert_array_equal(eager.y.values, cube.y.values)
    # rows are independent: each row alone gives the same answer
    row = radar_geometry(cube.isel(y=[7]), incidence=40.0)
    np.testing.assert_array_equal(row.values[:, 0], eager.values[:, 7])


def test_radar_geometry_finds_the_hard_water_scenes_radar_shadow():
    """From the scene's DEM product (metre-scale errors), the shadow the SAR really has."""
    from xfusion.datasets import synthetic_scene

    scene = synthetic_scene("water", seed=1, size=64, difficulty="hard")
    mask = radar_geometry(scene["terrain"].sel(band=["DEM"])).sel(band="radar_shadow").values
    truth = scene["truth_dark_land"].sel(band="radar_shadow").values.astype(bool)
    assert truth.sum() > 20
    found = mask.astype(bool)
    assert (found & truth).sum() / truth.sum() > 0.9  # recall
    assert (found & truth).sum() / found.sum() > 0.8  # precision


def test_radar_geometry_errors():
    dem = _ridge(50.0)
    with pytest.raises(InputError, match="look must be one of"):
        radar_geometry(dem, look="north")
    with pytest.raises(InputError, match=r"incidence must be in \(0, 90\)"):
        radar_geometry(dem, incidence=90.0)
    with pytest.raises(InputError, match="the DEM has 2 bands; expected one"):
        radar_geometry(xr.concat([dem, dem], "band"))
    with pytest.raises(InputError, match="at least two x columns"):
        radar_geometry(dem.isel(x=[0]))


def test_holdout_strip_columns_coordinates_and_errors():
    cube = _series(1).isel(time=0, drop=True).assign_coords(x=np.arange(5) * 30.0 + 15)
    strip = holdout_strip(cube, 0.4)
    assert strip.dtype == bool and strip.dims == ("y", "x") and strip.name == "holdout"
    np.testing.assert_array_equal(strip.values.any(axis=0), [False, False, False, True, True])
    assert strip.values[:, 3:].all()
    np.testing.assert_array_equal(strip.x.values, cube.x.values)
    assert holdout_strip(cube, 0.01).values.sum(axis=1).tolist() == [1] * 6  # one column at least
    with pytest.raises(InputError, match=r"training region is 3 px wide .* at least 4 px"):
        holdout_strip(cube, 0.4, min_train=4)
    with pytest.raises(InputError, match="fraction must be strictly between 0 and 1"):
        holdout_strip(cube, 1.0)


def test_open_layer_from_stac_renames_selects_dates_and_reduces(tmp_path):
    from xfusion.datasets import synthetic_scene, write_stac
    from xfusion.grids import geobox_of

    scene = synthetic_scene("water", seed=0, size=32)
    sar = scene["sar"]
    catalog = write_stac({"sar": sar}, tmp_path / "stac")
    items = catalog.parent / "sar" / "collection.json"
    grid = geobox_of(sar)
    kwargs = {"grid": grid, "chunks": {"y": 16, "x": 16}}
    out = open_layer(items, ["HH", "HV"], ["hh", "hv"], **kwargs)
    assert out.dims == ("band", "y", "x") and out.band.values.tolist() == ["hh", "hv"]
    assert out.chunks is not None
    expected = sar.median("time") if sar.sizes["time"] > 1 else sar.isel(time=0)
    np.testing.assert_allclose(out.values, expected.values, rtol=1e-6)
    first = str(sar.time.values[0])[:10]
    with pytest.raises(EmptySelectionError, match="in the date range"):
        open_layer(items, ["HH"], ["hh"], start="1990-01-01", end=first, **kwargs)
    with pytest.raises(InputError, match="one name per band"):
        open_layer(items, ["HH", "HV"], ["hh"], **kwargs)
    with pytest.raises(InputError, match="source must be 'stac' or 'ee'"):
        open_layer(items, ["HH"], ["hh"], source="gee", **kwargs)
