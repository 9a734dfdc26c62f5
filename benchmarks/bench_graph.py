"""Graph build of a grid change onto continental and global canvases (nothing is computed).

Three workloads, each timed in the same run as its competitors (round-robin, medians):

``sparse`` (the case's headline, ``xfusion`` vs ``competitors``)
    A 4096² px 10 m UTM 33N cube (1024² chunks) resampled lazily (bilinear) onto a global
    EPSG:4326 grid at 0.001° (360000 × 180000 px, 256² output chunks: ~990,000 chunks of which a
    handful hold data). Competitor: odc-geo's own lazy ``xr_reproject`` onto the same grid and
    chunks. Targets: build < 5 s, peak memory < 1 GB.
``previous`` (in ``extra``)
    The same cube onto a global 0.01° grid (~10,000 chunks), against xfusion's previous graph
    builder (one ``compute_reproject_roi`` and one task per output chunk, kept verbatim in
    ``benchmarks/_previous_graph.py``); at 0.001° it ran for minutes.
``dense`` (in ``extra``)
    A 4326 cube covering Europe at 0.0005° (2048² chunks) onto a LAEA Europe (EPSG:3035) grid
    at 40 m whose ~100,000 output chunks all hold data. Target: < 10 s. Reports tasks/s. The
    previous builder (minutes on that grid) is timed against xfusion on its top-left quarter
    (``dense_quarter``).

Besides wall-clock medians, the process CPU seconds of each run are recorded: on a shared,
oversubscribed machine the wall clock mostly measures how much CPU the process was given.
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
from benchmarks._previous_graph import warp_dask_dense
from benchmarks._util import case_result, measure_interleaved
from xfusion.grids import assign_grid

CASE = "graph"


def lazy_cube(gbox, chunk: int) -> xr.DataArray:
    """A lazy ``(band=1, y, x)`` float32 cube on ``gbox`` (never computed here)."""
    data = dask.array.zeros((1, *gbox.shape), chunks=(1, chunk, chunk), dtype=np.float32)
    return assign_grid(xr.DataArray(data, dims=("band", "y", "x"), coords={"band": ["b"]}), gbox)


def _n_tasks(arr: dask.array.Array) -> int:
    """Tasks of the grid-change layer that compute something (not aliases of the fill chunk)."""
    layer = arr.dask.layers[arr.name]
    return len(layer.tasks) if hasattr(layer, "tasks") else len(layer)


def _xfusion(cube, dst, chunk):
    return xf.resample(cube, dst, "bilinear", chunks=chunk).data


def _previous(cube, dst, chunk):
    src = xf.grids.geobox_of(cube)
    # NaN from points outside the source CRS's domain, as before
    with np.errstate(invalid="ignore"):
        return warp_dask_dense(cube.data, src, dst, "bilinear", (chunk, chunk))


def _odc(cube, dst, chunk):
    with np.errstate(invalid="ignore"):
        out = xr_reproject(
            cube, dst, resampling="bilinear", dst_nodata=np.nan, chunks=(chunk, chunk)
        )
    return out.data


def _func(task):
    """The function of a graph task, legacy tuple or task spec."""
    return task[0] if isinstance(task, tuple) else getattr(task, "func", None)


def _summary(runs: dict, cpu: dict, tasks: dict, chunks: int) -> dict:
    out = {}
    for name, m in runs.items():
        out[name] = {
            "median_s": m["median_s"],
            "times_s": m["times_s"],
            "cpu_s_median": cpu[name],
            "peak_mem_mb": m["peak_mem_mb"],
            "tasks": tasks[name],
            "chunks": chunks,
            "tasks_per_s": tasks[name] / m["median_s"],
            # canvas chunks covered per second of graph building, the empty ones included
            "chunks_per_s": chunks / m["median_s"],
        }
    return out


def run(*, smoke: bool = False, repeats: int = 3) -> dict:
    if smoke:
        size, src_chunk, res, res_prev, out_chunk = 256, 128, 0.05, 0.1, 128
        dense_res, dense_bounds = 0.05, (-10, 35, 40, 70)
        dense_dst = (3000000, 2000000, 3640000, 2640000, 5000)
    else:
        size, src_chunk, res, res_prev, out_chunk = 4096, 1024, 0.001, 0.01, 256
        dense_res, dense_bounds = 0.0005, (-10, 35, 40, 70)
        # 320 x 320 chunks of 256 px at 40 m, inside the source's footprint
        dense_dst = (3000000, 2000000, 3000000 + 81920 * 40, 2000000 + 81920 * 40, 40)
    src = xf.grid((500000, 4000000, 500000 + 10 * size, 4000000 + 10 * size), "EPSG:32633", 10)
    cube = lazy_cube(src, src_chunk)

    # --- sparse: a small cube onto a global canvas -------------------------------------------
    dst = xf.grid((-180, -90, 180, 90), "EPSG:4326", res)
    fns = {
        "xfusion": lambda: _xfusion(cube, dst, out_chunk),
        "odc-geo xr_reproject (lazy graph)": lambda: _odc(cube, dst, out_chunk),
    }
    runs, cpu = measure_interleaved(fns, repeats=repeats)
    tasks = {name: _n_tasks(m["result"]) for name, m in runs.items()}
    n_chunks = int(np.prod(runs["xfusion"]["result"].numblocks))
    sparse = _summary(runs, cpu, tasks, n_chunks)

    # --- previous: the same cube onto a 10x coarser global canvas, against the old builder ----
    dst_prev = xf.grid((-180, -90, 180, 90), "EPSG:4326", res_prev)
    prev_runs, prev_cpu = measure_interleaved(
        {
            "xfusion": lambda: _xfusion(cube, dst_prev, out_chunk),
            "previous xfusion graph": lambda: _previous(cube, dst_prev, out_chunk),
        },
        repeats=repeats,
    )
    prev_tasks = {name: _n_tasks(m["result"]) for name, m in prev_runs.items()}
    prev_chunks = int(np.prod(prev_runs["xfusion"]["result"].numblocks))
    previous = _summary(prev_runs, prev_cpu, prev_tasks, prev_chunks)
    old_arr = prev_runs["previous xfusion graph"]["result"]
    old_warps = sum(
        1 for v in old_arr.dask.layers[old_arr.name].values() if _func(v) is not np.full
    )

    # --- dense: ~100k output chunks that all hold data -----------------------------------------
    dense_src = xf.grid(dense_bounds, "EPSG:4326", dense_res)
    dense_cube = lazy_cube(dense_src, 2048 if not smoke else 64)
    *bounds, dres = dense_dst
    dense_grid = xf.grid(tuple(bounds), "EPSG:3035", dres)
    dense_runs, dense_cpu = measure_interleaved(
        {"xfusion": lambda: _xfusion(dense_cube, dense_grid, out_chunk)}, repeats=repeats
    )
    dense_tasks = {"xfusion": _n_tasks(dense_runs["xfusion"]["result"])}
    dense_chunks = int(np.prod(dense_runs["xfusion"]["result"].numblocks))
    dense = _summary(dense_runs, dense_cpu, dense_tasks, dense_chunks)
    # the previous builder takes minutes on the whole dense grid (one compute_reproject_roi per
    # chunk): both builders on its top-left quarter, in the same run
    quarter = dense_grid[: dense_grid.shape[0] // 2, : dense_grid.shape[1] // 2]
    quarter_runs, quarter_cpu = measure_interleaved(
        {
            "xfusion": lambda: _xfusion(dense_cube, quarter, out_chunk),
            "previous xfusion graph": lambda: _previous(dense_cube, quarter, out_chunk),
        },
        repeats=repeats,
    )
    quarter_tasks = {name: _n_tasks(m["result"]) for name, m in quarter_runs.items()}
    quarter_chunks = int(np.prod(quarter_runs["xfusion"]["result"].numblocks))
    dense_quarter = _summary(quarter_runs, quarter_cpu, quarter_tasks, quarter_chunks)

    extra = {
        "targets": (
            "sparse (4096^2 onto global 0.001 deg): build < 5 s and peak memory < 1 GB; "
            "dense (~100k chunks with data): build < 10 s"
        ),
        "sparse": sparse,
        "previous_at_coarser_canvas": {
            **previous,
            "ratio_previous_over_xfusion": (
                previous["previous xfusion graph"]["median_s"] / previous["xfusion"]["median_s"]
            ),
            # chunks the previous builder warped (the others it filled with NaN one by one)
            "previous_warp_tasks": old_warps,
        },
        "dense": dense,
        "dense_quarter": {
            **dense_quarter,
            "ratio_previous_over_xfusion": (
                dense_quarter["previous xfusion graph"]["median_s"]
                / dense_quarter["xfusion"]["median_s"]
            ),
        },
        "cpu_ratio_vs_odc_geo": (
            cpu["odc-geo xr_reproject (lazy graph)"] / max(cpu["xfusion"], 1e-9)
        ),
    }
    return case_result(
        CASE,
        xfusion=runs["xfusion"],
        competitors={
            "odc-geo xr_reproject (lazy graph)": runs["odc-geo xr_reproject (lazy graph)"]
        },
        params={
            "src_shape": [1, size, size],
            "src_chunks": [1, src_chunk, src_chunk],
            "src_crs": "EPSG:32633",
            "dst_crs": "EPSG:4326",
            "dst_resolution_deg": res,
            "dst_shape": list(dst.shape),
            "output_chunks": [out_chunk, out_chunk],
            "previous_canvas_resolution_deg": res_prev,
            "dense_src": {"bounds": list(dense_bounds), "crs": "EPSG:4326", "res": dense_res},
            "dense_dst": {"bounds": bounds, "crs": "EPSG:3035", "res": dres},
            "resampling": "bilinear",
            "smoke": smoke,
            "repeats": repeats,
        },
        packages=("odc-geo", "rasterio", "pyproj", "shapely"),
        extra=extra,
    )


if __name__ == "__main__":
    result = run(smoke="--smoke" in sys.argv)
    out = Path(__file__).resolve().parent / "results" / f"{CASE}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
