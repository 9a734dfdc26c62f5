"""Tests for xfusion.grids: the grid constructor, its backend adapters and coordinate helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio.transform
import rioxarray  # noqa: F401  registers .rio
import xarray as xr
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from odc.geo.geobox import GeoBox

import xfusion as xf
from xfusion.errors import GridError
from xfusion.grids import as_geobox, assign_grid, geobox_of, grid_coords, to_stackstac, to_xee

# inside the area of use of EPSG:32633 and its margin, at least one pixel wide
bounds_st = st.tuples(
    st.floats(-4e5, 1e6, allow_nan=False),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.floats(500.0, 5e4, allow_nan=False),
    st.floats(500.0, 5e4, allow_nan=False),
)
resolution_st = st.tuples(st.floats(0.5, 500.0), st.floats(0.5, 500.0))


@settings(max_examples=15, deadline=None)
@given(bounds_st, resolution_st)
def test_grid_covers_bounds_by_less_than_a_pixel(origin, resolution):
    left, bottom, width, height = origin
    right, top = left + width, bottom + height
    g = xf.grid((left, bottom, right, top), "EPSG:32633", resolution)
    xres, yres = resolution
    assert g.affine == rasterio.transform.from_origin(left, top, xres, yres)
    bb = g.boundingbox
    assert bb.left == left and bb.top == top
    assert bb.right >= right - 1e-6 * xres and bb.right - right < xres
    assert bb.bottom <= bottom + 1e-6 * yres and bottom - bb.bottom < yres
    assert g.shape == (math.ceil(height / yres - 1e-9), math.ceil(width / xres - 1e-9))


@settings(max_examples=15, deadline=None)
@given(bounds_st, resolution_st)
def test_grid_round_trips_through_a_cube(origin, resolution):
    left, bottom, width, height = origin
    g = xf.grid(
        (left, bottom, left + min(width, 600), bottom + min(height, 600)), 32633, resolution
    )
    cube = assign_grid(xr.DataArray(np.zeros(g.shape, "float32"), dims=("y", "x")), g)
    # Coordinates are pixel centres: reading the corner back costs at most float rounding.
    for back in (geobox_of(cube), as_geobox(cube)):
        assert back.shape == g.shape and back.crs == g.crs
        assert back.affine.almost_equals(g.affine, precision=1e-6)
    assert cube.rio.transform().almost_equals(g.affine, precision=1e-6)
    assert cube.rio.crs.to_epsg() == 32633


def test_grid_shape_and_scalar_resolution():
    g = xf.grid((500000, 4000000, 501000, 4002000), "EPSG:32633", 10)
    assert g.shape == (200, 100)
    assert g.affine == Affine(10, 0, 500000, 0, -10, 4002000)
    assert g.crs.epsg == 32633


def test_grid_coords_are_pixel_centres_like_rasterio():
    g = xf.grid((300000, 5000000, 300090, 5000060), 32631, 30)
    coords = grid_coords(g)
    rows, cols = np.arange(g.shape[0]), np.arange(g.shape[1])
    xs, _ = rasterio.transform.xy(g.affine, np.zeros_like(cols), cols, offset="center")
    _, ys = rasterio.transform.xy(g.affine, rows, np.zeros_like(rows), offset="center")
    np.testing.assert_array_equal(coords["x"].values, np.asarray(xs))
    np.testing.assert_array_equal(coords["y"].values, np.asarray(ys))
    assert "spatial_ref" in coords


def test_to_xee_arguments():
    g = xf.grid((500000, 4000000, 500300, 4000200), "EPSG:32633", (30, 20))
    args = to_xee(g)
    assert args["crs"] == "EPSG:32633"
    assert args["crs_transform"] == (30, 0, 500000, 0, -20, 4000200)
    assert args["shape_2d"] == (10, 10)
    assert xf.grid.to_xee(g) == args


def test_to_stackstac_arguments():
    g = xf.grid((500000, 4000000, 500300, 4000200), "EPSG:32633", (30, 20))
    args = to_stackstac(g)
    assert args == {
        "epsg": 32633,
        "resolution": (30, 20),
        "bounds": (500000, 4000000, 500300, 4000200),
        "snap_bounds": False,
    }


def test_to_stackstac_rejects_rotation_and_non_epsg_crs():
    rotated = GeoBox((4, 4), Affine(10, 1, 0, 1, -10, 0), "EPSG:32633")
    with pytest.raises(GridError, match="north-up"):
        to_stackstac(rotated)
    custom = GeoBox(
        (4, 4), Affine(10, 0, 0, 0, -10, 0), "+proj=aea +lat_1=29.5 +lat_2=45.5 +lon_0=-96"
    )
    with pytest.raises(GridError, match="EPSG"):
        to_stackstac(custom)


@pytest.mark.parametrize(
    ("bounds", "crs", "resolution", "message"),
    [
        ((0, 0, 0, 10), 32633, 10, "left < right"),
        ((0, 10, 10, 0), 32633, 10, "bottom < top"),
        ((0, 0, 10), 32633, 10, "bounds must be"),
        ((0, 0, 10, 10), 32633, 0, "positive"),
        ((0, 0, 10, 10), 32633, math.inf, "positive and finite"),
        ((0, 0, 10, 10), "EPSG:notacode", 10, "cannot understand CRS"),
    ],
)
def test_grid_rejects_bad_arguments(bounds, crs, resolution, message):
    with pytest.raises(GridError, match=message):
        xf.grid(bounds, crs, resolution)


def test_assign_grid_rejects_wrong_shape_and_geobox_of_needs_a_crs():
    g = xf.grid((0, 0, 40, 40), 32633, 10)
    with pytest.raises(GridError, match=r"does not fit grid \(4, 4\)"):
        assign_grid(xr.DataArray(np.zeros((3, 4)), dims=("y", "x")), g)
    plain = xr.DataArray(
        np.zeros((2, 2)), dims=("y", "x"), coords={"y": [1.5, 0.5], "x": [0.5, 1.5]}
    )
    with pytest.raises(GridError, match="no usable grid"):
        geobox_of(plain)
    with pytest.raises(GridError, match="expected a grid"):
        as_geobox("EPSG:32633")
