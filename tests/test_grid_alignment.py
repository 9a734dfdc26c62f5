"""One grid, three readers: open_stac, open_ee and open_raster line up pixel for pixel."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pystac
import rasterio
import rioxarray
import xarray as xr

import xfusion as xf
from xfusion.grids import geobox_of
from xfusion.testing.ee import FakeImage, fake_earth_engine

CRS = "EPSG:32633"
NATIVE = xf.grid((499_000, 3_999_000, 500_200, 4_000_000), CRS, 10)  # 120 x 100 px file
# a window of the file, offset from its corner, at the file's resolution
GRID = xf.grid((499_230, 3_999_310, 499_870, 3_999_790), CRS, 10)


def _write_tif(path, data):
    a = NATIVE.affine
    with rasterio.open(
        path, "w", driver="GTiff", width=NATIVE.width, height=NATIVE.height, count=1,
        dtype="uint16", crs=CRS, transform=a, tiled=True, blockxsize=32, blockysize=32,
    ) as dst:  # fmt: skip
        dst.write(data, 1)


def _item(path, when):
    item = pystac.Item(
        id="scene", geometry=None, bbox=None, datetime=pd.Timestamp(when).to_pydatetime(),
        properties={"proj:epsg": 32633, "proj:shape": list(NATIVE.shape),
                    "proj:transform": list(NATIVE.affine)[:6]},
    )  # fmt: skip
    item.add_asset("B04", pystac.Asset(href=str(path), media_type=pystac.MediaType.COG))
    return item


def test_same_grid_through_stac_ee_and_raster(tmp_path):
    rng = np.random.default_rng(7)
    data = rng.integers(1, 10_000, tuple(NATIVE.shape)).astype("uint16")
    path = tmp_path / "b04.tif"
    _write_tif(path, data)

    stac = xf.open_stac([_item(path, "2020-06-01")], grid=GRID, chunks={"y": 16, "x": 32})
    raster = xf.open_raster(path, grid=GRID, band_names=["B04"])
    with fake_earth_engine(
        {"TEST/B04": [FakeImage({"B04": data}, grid=NATIVE, time="2020-06-01")]}
    ):
        ee_cube = xf.open_ee("TEST/B04", grid=GRID, bands=["B04"]).compute()

    reference = rioxarray.open_rasterio(path).squeeze("band", drop=True)
    reference = reference.sel(x=stac.x, y=stac.y)  # rioxarray's own coordinates of the window
    for cube in (stac, raster, ee_cube):
        assert geobox_of(cube) == GRID
        assert cube.rio.transform() == GRID.affine
        assert cube.rio.crs == rasterio.crs.CRS.from_string(CRS)
        np.testing.assert_array_equal(cube.x.values, reference.x.values)
        np.testing.assert_array_equal(cube.y.values, reference.y.values)
        values = cube.squeeze(drop=True).transpose("y", "x").values
        np.testing.assert_array_equal(values, reference.values.astype("float32"))
    xr.testing.assert_equal(stac.x, ee_cube.x)
    xr.testing.assert_equal(raster.y, ee_cube.y)
