"""Aligned integer-factor aggregation (10 m -> 100 m, average) on a chunked float32 cube with NaNs.

xfusion's nan-aware numba kernel against ``xarray``'s ``coarsen().mean()`` and odc-geo's
``xr_reproject(..., resampling="average")`` (GDAL per chunk), all on the same Dask cube and the
default threaded scheduler. Also reported: the fraction of memory bandwidth reached, measured as
the time of a numpy copy of the same bytes divided by xfusion's time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dask.array
import numpy as np
import xarray as xr
from odc.geo.xr import xr_reproject

import xfusion as xf
from benchmarks._util import case_result, measure
from xfusion._kernels.aggregate import aggregate_blocks
from xfusion.grids import assign_grid

CASE = "aggregate"


def make_cube(size: int, chunk: int, *, seed: int = 0) -> xr.DataArray:
    """``(band=1, y, x)`` float32 cube on a 10 m UTM grid, 10 % NaN, backed by numpy chunks."""
    rng = np.random.default_rng(seed)
    data = rng.random((1, size, size), dtype=np.float32) * 1000
    data[rng.random(data.shape, dtype=np.float32) < 0.1] = np.nan
    gbox = xf.grid((500000, 4000000, 500000 + 10 * size, 4000000 + 10 * size), "EPSG:32633", 10)
    arr = dask.array.from_array(data, chunks=(1, chunk, chunk))
    cube = xr.DataArray(arr, dims=("band", "y", "x"), coords={"band": ["b"]})
    return assign_grid(cube, gbox)


def run(*, smoke: bool = False, repeats: int = 3) -> dict:
    size, chunk, factor = (1000, 500, 10) if smoke else (8000, 2000, 10)
    cube = make_cube(size, chunk)
    src = cube.odc.geobox
    dst = xf.grid(tuple(src.boundingbox)[:4], src.crs, 10 * factor)

    ours = measure(lambda: xf.resample(cube, dst, "average").data.compute(), repeats=repeats)
    coarsen = measure(
        lambda: cube.coarsen(y=factor, x=factor).mean().data.compute(), repeats=repeats
    )
    odc = measure(
        lambda: xr_reproject(
            cube, dst, resampling="average", src_nodata=np.nan, dst_nodata=np.nan
        ).data.compute(),
        repeats=repeats,
    )
    # the three agree (odc-geo/GDAL and coarsen are independent references)
    for name, other in (("coarsen", coarsen), ("odc-geo", odc)):
        np.testing.assert_allclose(ours["result"], other["result"], rtol=1e-4, err_msg=name)

    values = cube.data.compute()
    target = np.empty_like(values)
    copy = measure(lambda: np.copyto(target, values), repeats=repeats)
    kernel = measure(lambda: aggregate_blocks(values, (factor, factor), "average"), repeats=repeats)
    nbytes = values.nbytes
    extra = {
        "memory_bandwidth": {
            "numpy_copy_s": copy["median_s"],
            "copy_gb_per_s": 2 * nbytes / copy["median_s"] / 1e9,
            "xfusion_read_gb_per_s": nbytes / ours["median_s"] / 1e9,
            "fraction_of_copy_xfusion_dask": copy["median_s"] / ours["median_s"],
            "kernel_numpy_single_thread_s": kernel["median_s"],
            "fraction_of_copy_kernel_single_thread": copy["median_s"] / kernel["median_s"],
        },
        "target": "xfusion >= 3x faster than coarsen().mean() and odc-geo xr_reproject(average)",
    }
    return case_result(
        CASE,
        xfusion=ours,
        competitors={"xarray coarsen().mean()": coarsen, "odc-geo xr_reproject average": odc},
        params={
            "shape": [1, size, size],
            "chunks": [1, chunk, chunk],
            "dtype": "float32",
            "nan_fraction": 0.1,
            "factor": factor,
            "output_chunks": [list(map(int, c)) for c in xf.resample(cube, dst).chunks],
            "smoke": smoke,
            "repeats": repeats,
        },
        packages=("odc-geo", "numba", "rasterio"),
        extra=extra,
    )


if __name__ == "__main__":
    result = run(smoke="--smoke" in sys.argv)
    out = Path(__file__).resolve().parent / "results" / f"{CASE}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
