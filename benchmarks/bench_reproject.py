"""UTM -> EPSG:4326 bilinear reprojection of a chunked float32 cube.

xfusion's padded tile-intersection warp against odc-geo ``xr_reproject`` (Dask-native, GDAL per
chunk) and rioxarray ``rio.reproject`` (eager: it loads the whole array), onto the same target
grid. Targets: at least odc-geo's speed, peak memory at most 1.2x odc-geo's.

The contenders are timed round-robin (one run each per round). Besides wall-clock medians, the
CPU seconds of the process (all threads, ``time.process_time``) are recorded for each timed
run: on a shared, oversubscribed machine the wall clock mostly measures how much CPU the
process was given, the CPU time how much work it did.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dask.array
import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from odc.geo.xr import xr_reproject
from rasterio.enums import Resampling

import xfusion as xf
from benchmarks._util import case_result, measure_interleaved
from xfusion.grids import assign_grid

CASE = "reproject"


def make_cube(size: int, chunk: int, *, seed: int = 0) -> xr.DataArray:
    """``(band=1, y, x)`` smooth float32 field with 5 % NaN on a 10 m UTM 33N grid."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    data = (100 + 50 * np.sin(yy / 50) * np.cos(xx / 70))[None].astype(np.float32)
    data[rng.random(data.shape, dtype=np.float32) < 0.05] = np.nan
    gbox = xf.grid((500000, 4000000, 500000 + 10 * size, 4000000 + 10 * size), "EPSG:32633", 10)
    arr = dask.array.from_array(data, chunks=(1, chunk, chunk))
    return assign_grid(xr.DataArray(arr, dims=("band", "y", "x"), coords={"band": ["b"]}), gbox)


def run(*, smoke: bool = False, repeats: int = 3) -> dict:
    size, chunk = (500, 250) if smoke else (4000, 1000)
    cube = make_cube(size, chunk)
    dst = cube.odc.output_geobox("EPSG:4326")

    runs, cpu_s = measure_interleaved(
        {
            "xfusion": lambda: xf.resample(cube, dst, "bilinear").data.compute(),
            "odc-geo": lambda: xr_reproject(
                cube, dst, resampling="bilinear", src_nodata=np.nan, dst_nodata=np.nan
            ).data.compute(),
            "rioxarray": lambda: (
                cube.rio.reproject(
                    "EPSG:4326",
                    shape=tuple(dst.shape),
                    transform=dst.affine,
                    resampling=Resampling.bilinear,
                    nodata=np.nan,
                ).values
            ),
        },
        repeats=repeats,
    )
    ours, odc, rio = runs["xfusion"], runs["odc-geo"], runs["rioxarray"]
    a, b = ours["result"][0], odc["result"][0]
    both = np.isfinite(a) & np.isfinite(b)
    extra = {
        "agreement_with_odc_geo": {
            "max_abs_diff": float(np.abs(a[both] - b[both]).max()),
            "nan_mismatch_pixels": int((np.isnan(a) != np.isnan(b)).sum()),
        },
        "targets": "speed >= 1.0x odc-geo; peak memory <= 1.2x odc-geo",
        "cpu_s_median": cpu_s,
        "cpu_ratio_vs_odc_geo": cpu_s["odc-geo"] / cpu_s["xfusion"],
        "memory_ratio_vs_odc_geo": ours["peak_mem_mb"] / max(odc["peak_mem_mb"], 1e-9),
    }
    return case_result(
        CASE,
        xfusion=ours,
        competitors={"odc-geo xr_reproject": odc, "rioxarray reproject (eager)": rio},
        params={
            "shape": [1, size, size],
            "chunks": [1, chunk, chunk],
            "src_crs": "EPSG:32633",
            "dst_crs": "EPSG:4326",
            "dst_shape": list(dst.shape),
            "resampling": "bilinear",
            "output_chunks": [list(map(int, c)) for c in xf.resample(cube, dst, "bilinear").chunks],
            "smoke": smoke,
            "repeats": repeats,
        },
        packages=("odc-geo", "rioxarray", "rasterio"),
        extra=extra,
    )


if __name__ == "__main__":
    result = run(smoke="--smoke" in sys.argv)
    out = Path(__file__).resolve().parent / "results" / f"{CASE}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
