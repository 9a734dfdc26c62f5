"""Sparse grid-change graphs: tasks only where data reach, one shared NaN chunk elsewhere.

The reference is the previous graph builder (one task per output chunk, kept verbatim in
``benchmarks/_previous_graph.py``): every chunk with data must hold the same bits.
"""

from __future__ import annotations

import re
import time

import dask
import dask.array
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from dask.local import get_sync
from odc.geo.overlap import compute_reproject_roi

import xfusion as xf
from benchmarks._previous_graph import aggregate_dask_dense, warp_dask_dense
from tests.conftest import synthetic_cube
from xfusion._graph import Alias, SparseChunkLayer, chunk_starts, reproject_rois
from xfusion.io import raster as raster_module
from xfusion.io import stac as stac_module
from xfusion.preprocess import resample as resample_module
from xfusion.testing import raise_if_dask_computes

pytestmark = pytest.mark.filterwarnings("ignore:Dataset has no geotransform")

# (source grid, target grid, output chunks): each pair is a case the footprint logic must get
# right, on canvases small enough to compare every chunk with the previous graph
PAIRS = {
    # UTM source half outside a geographic canvas (west and south edges)
    "partly_outside": (
        xf.grid((500000, 4000000, 503000, 4002000), 32633, 10),
        xf.grid((15.0, 36.14, 15.1, 36.2), 4326, 0.0002),
        (50, 60),
    ),
    # UTM zone 60 crossing the antimeridian onto a global-longitude strip
    "antimeridian": (
        xf.grid((700000, 7000000, 900000, 7100000), 32660, 1000),
        xf.grid((-180, 62, 180, 65), 4326, 0.02),
        (40, 700),
    ),
    # polar stereographic source holding the north pole onto a geographic polar cap
    "pole_source": (
        xf.grid((-400000, -400000, 400000, 400000), 3413, 10000),
        xf.grid((-180, 80, 180, 90), 4326, 0.5),
        (7, 90),
    ),
    # a geographic source reaching the pole onto a polar stereographic grid
    "pole_target": (
        xf.grid((-180, 85, 180, 90), 4326, 0.25),
        xf.grid((-700000, -700000, 700000, 700000), 3413, 20000),
        (16, 16),
    ),
    # same CRS, fractional factor: the linear transform
    "same_crs": (
        xf.grid((500000, 4000000, 500530, 4000470), 32633, 10),
        xf.grid((499000, 3999000, 501500, 4001500), 32633, 25),
        (17, 23),
    ),
}


def _cube(gbox, chunks=(40, 40), seed=0, lead=2):
    rng = np.random.default_rng(seed)
    data = rng.random((lead, *gbox.shape)).astype(np.float32) * 100
    data[rng.random(data.shape) < 0.1] = np.nan
    return synthetic_cube(dask.array.from_array(data, chunks=(1, *chunks)), grid=gbox)


def _tasks(arr: dask.array.Array) -> SparseChunkLayer:
    return arr.dask.layers[arr.name]


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("pad", [1, 3])
def test_source_windows_equal_compute_reproject_roi(pair, pad):
    src, dst, (cy, cx) = PAIRS[pair]
    ychunks = resample_module._out_chunks(dst.shape[0], cy)
    xchunks = resample_module._out_chunks(dst.shape[1], cx)
    ys, xs = chunk_starts(ychunks), chunk_starts(xchunks)
    by, bx = np.meshgrid(np.arange(len(ychunks)), np.arange(len(xchunks)), indexing="ij")
    by, bx = by.ravel(), bx.ravel()
    got = reproject_rois(src, dst, ys, xs, by, bx, pad)
    nonempty = 0
    for (r0, r1, c0, c1), i, j in zip(got.tolist(), by, bx, strict=True):
        chunk = dst[ys[i] : ys[i + 1], xs[j] : xs[j + 1]]
        rys, rxs = compute_reproject_roi(src, chunk, padding=pad).roi_src
        if rys.stop > rys.start and rxs.stop > rxs.start:
            nonempty += 1
            assert (r0, r1, c0, c1) == (rys.start, rys.stop, rxs.start, rxs.stop), (i, j)
        else:
            assert r1 <= r0 or c1 <= c0, (i, j)
    assert 0 < nonempty


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("method", ["bilinear", "average", "nearest", "cubic"])
def test_warp_values_equal_previous_graph(pair, method):
    src, dst, chunks = PAIRS[pair]
    cube = _cube(src)
    with raise_if_dask_computes():
        new = resample_module._warp_dask(cube.data, src, dst, method, chunks)
    old = warp_dask_dense(cube.data, src, dst, method, chunks)
    a, b = dask.compute(new, old, scheduler="sync")
    np.testing.assert_array_equal(a, b)  # NaN where NaN, the same bits elsewhere
    assert np.isfinite(a).sum() > 0
    # fewer tasks than chunks wherever part of the canvas is out of the data's reach
    n_tasks = len(_tasks(new).tasks)
    assert 0 < n_tasks <= np.prod(new.numblocks)


@pytest.mark.parametrize("method", ["average", "sum", "mode", "max", "bitwise_or"])
def test_aggregate_values_equal_previous_graph(method):
    src = xf.grid((500000, 4000000, 500530, 4000470), 32633, 10)
    cube = _cube(src, chunks=(13, 17)).round()
    # aligned k=3 canvas reaching far beyond the source on every side
    args = ((3, 3), (-630, -840), (700, 900), method, (32, 48))
    new = resample_module._aggregate_dask(cube.data, *args)
    old = aggregate_dask_dense(cube.data, *args)
    a, b = dask.compute(new, old, scheduler="sync")
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).sum() > 0
    assert len(_tasks(new).tasks) == 2 * 2 * 2  # 2 bands x 2 x 2 chunks with data


def test_fill_chunks_are_shared_and_tasks_grow_with_data_not_canvas():
    src = xf.grid((500000, 4000000, 500160, 4000160), 32633, 10)
    cube = _cube(src, chunks=(16, 16), lead=1)
    counts = []
    for res in (0.01, 0.002, 0.001):
        dst = xf.grid((10, 30, 20, 40), 4326, res)
        out = xf.resample(cube, dst, "bilinear", chunks=64).data
        graph = dict(out.__dask_graph__())
        real = [k for k, v in graph.items() if k[0] == out.name and not isinstance(v, Alias)]
        aliases = {v.target for k, v in graph.items() if isinstance(v, Alias)}
        counts.append((len(real), int(np.prod(out.numblocks)), len(aliases)))
    # the canvas grows 100-fold, the tasks stay a handful, the empty chunks alias at most one
    # fill chunk per distinct chunk shape (the last row/column may be shorter)
    assert [c[1] for c in counts] == sorted(c[1] for c in counts) and counts[-1][1] > 20_000
    assert all(1 <= c[0] <= 4 for c in counts)
    assert all(c[2] <= 4 for c in counts)
    # computing two empty chunks runs one fill task: the same array comes back for both
    out = xf.resample(cube, xf.grid((10, 30, 20, 40), 4326, 0.002), "bilinear", chunks=64)
    graph = out.data.__dask_graph__()
    a, b = get_sync(graph, [(out.data.name, 0, 0, 0), (out.data.name, 0, 1, 1)])
    assert np.isnan(a).all() and a.shape == b.shape == (1, 64, 64)
    assert np.shares_memory(a, b)


def test_global_canvas_graph_is_built_in_proportion_to_data():
    # a 16 x 16 px cube onto a global 0.001 degree grid: a million 256-px chunks
    src = xf.grid((15.0, 45.0, 15.0112, 45.0112), 4326, 0.0007)
    cube = _cube(src, chunks=(16, 16), lead=1)
    dst = xf.grid((-180, -90, 180, 90), 4326, 0.001)
    start = time.perf_counter()
    with raise_if_dask_computes():
        out = xf.resample(cube, dst, "bilinear")
    took = time.perf_counter() - start
    assert out.shape == (1, 180000, 360000)
    assert np.prod(out.data.numblocks) > 900_000
    assert len(_tasks(out.data).tasks) <= 4
    assert took < 5, took
    # the window holding the data equals the whole-array warp onto that window (same CRS)
    window = dst[44_900:45_100, 194_900:195_100]
    got = out.isel(y=slice(44_900, 45_100), x=slice(194_900, 195_100)).values
    ref = xf.resample(cube.compute(), window, "bilinear").values
    np.testing.assert_array_equal(got, ref)
    assert np.isfinite(got).sum() > 100
    assert np.isnan(out.isel(y=slice(0, 10), x=slice(0, 10)).values).all()


def test_in_memory_cube_onto_a_global_grid_is_lazy_not_a_memory_error():
    src = xf.grid((500000, 4000000, 500160, 4000160), 32633, 10)
    cube = _cube(src, lead=1).compute()
    dst = xf.grid((-180, -90, 180, 90), 4326, 0.001)
    out = xf.resample(cube, dst, "bilinear")  # 241 GiB if it were an array in memory
    assert isinstance(out.data, dask.array.Array)
    assert len(_tasks(out.data).tasks) <= 4
    small = xf.resample(cube, dst[53_800:53_900, 194_900:195_100], "bilinear")
    assert not isinstance(small.data, dask.array.Array)  # a small result stays in memory
    # the same values as the cube given as one Dask chunk
    window = {"y": slice(53_800, 53_900), "x": slice(194_900, 195_100)}
    got = out.isel(window).values
    ref = xf.resample(cube.chunk(), dst, "bilinear").isel(window).values
    np.testing.assert_array_equal(got, ref)
    assert np.isfinite(got).sum() > 0


def test_sparse_layer_mapping_and_cull():
    tasks = {}
    layer = SparseChunkLayer("a", ((2, 2), (3, 1)), np.float32, tasks)
    assert len(layer) == 4 + 2  # four chunks and two fill shapes: (2, 3) and (2, 1)
    keys = list(layer)
    assert ("a", 1, 1) in keys and ("a", 1, 1) in layer and ("a", 2, 0) not in layer
    node = layer[("a", 1, 1)]
    assert isinstance(node, Alias) and node.target == ("a-fill", 2, 1)
    with pytest.raises(KeyError):
        layer[("a", 0, 5)]
    culled, deps = layer.cull({("a", 0, 0), ("a", 1, 0), ("other", 0)}, set())
    assert set(culled) == {("a", 0, 0), ("a", 1, 0), ("a-fill", 2, 3)}
    assert list(deps)[-1] == ("a-fill", 2, 3)


def test_fuse_stacks_sparse_sources_like_xr_concat():
    from xfusion.preprocess.fuse import _concat_bands, _expand_time

    dst = xf.grid((14.9, 36.0, 15.2, 36.3), 4326, 0.001)
    s2 = _cube(PAIRS["partly_outside"][0], chunks=(64, 64), lead=2)
    coarse = _cube(xf.grid((15.05, 36.05, 15.15, 36.15), 4326, 0.004), chunks=(8, 8), lead=1)
    times = np.array(["2020-01-01", "2020-02-01"], "M8[ns]")
    a = xf.resample(s2, dst, "bilinear", chunks=(35, 45)).expand_dims(time=times)
    a = a.assign_coords(band=["s2:b0", "s2:b1"])
    b = xf.resample(coarse, dst, "bilinear", chunks=(64, 64)).assign_coords(band=["c:b0"])
    with raise_if_dask_computes():
        b_timed = _expand_time(b, times)
        got = _concat_bands([a, b_timed])
    assert "xf-concatenate" in got.data.name
    ref = xr.concat(
        [a, b.expand_dims(time=times)],
        dim="band",
        coords="minimal",
        compat="override",
        join="override",
    )
    with dask.config.set(scheduler="sync"):
        xr.testing.assert_identical(got.compute(), ref.compute())
    # the chunks of the first cube, and tasks only where data reach
    assert got.chunks[-2:] == a.chunks[-2:]
    assert np.isfinite(got.values).sum() > 0


def test_fuse_onto_a_global_grid_builds_in_proportion_to_data():
    s2 = _cube(xf.grid((500000, 4000000, 505120, 4005120), 32633, 10), chunks=(256, 256))
    viirs = _cube(xf.grid((14.9, 36.0, 15.2, 36.3), 4326, 0.004), chunks=(64, 64), lead=1)
    dst = xf.grid((-180, -90, 180, 90), 4326, 0.001)
    start = time.perf_counter()
    with raise_if_dask_computes():
        fused = xf.fuse({"s2": s2, "viirs": viirs}, grid=dst)
    took = time.perf_counter() - start
    assert fused.band.values.tolist() == ["s2:b0", "s2:b1", "viirs:b0"]
    assert np.prod(fused.data.numblocks) > 2_000_000
    assert len(_tasks(fused.data).tasks) < 100
    assert took < 10, took
    window = fused.isel(y=slice(53_700, 54_100), x=slice(194_900, 195_300))
    values = window.values
    assert np.isfinite(values[:2]).sum() > 1000 and np.isfinite(values[2]).sum() > 1000


def test_legacy_input_layers_keep_their_references():
    # a hand-made input whose legacy task names a key of another layer
    base = dask.array.from_array(np.arange(256, dtype=np.float32).reshape(1, 16, 16), chunks=8)
    name = "legacy-plus-one"
    dsk = {
        (name, 0, i, j): (np.add, (base.name, 0, i, j), np.float32(1))
        for i in range(2)
        for j in range(2)
    }
    graph = dask.highlevelgraph.HighLevelGraph.from_collections(name, dsk, dependencies=[base])
    arr = dask.array.Array(graph, name, chunks=((1,), (8, 8), (8, 8)), dtype=np.float32)
    src = xf.grid((15.0, 45.0, 15.016, 45.016), 4326, 0.001)
    cube = synthetic_cube(arr, ["b"], grid=src)
    dst = xf.grid((14.0, 44.0, 16.0, 46.0), 4326, 0.002)  # aligned, k = 2
    out = xf.resample(cube, dst, "average").values
    expected = xf.resample(cube.compute(), dst, "average").values
    np.testing.assert_array_equal(out, expected)
    assert (
        np.nanmax(out) == np.float32(256 - 16 - 2 + 1 + 0.5 + 16 / 2 + 0.5)
        or np.isfinite(out).sum() == 64
    )


def _write_tif(path, data, transform, crs="EPSG:32633", nodata=None):
    profile = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 16,
        "blockysize": 16,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.mark.parametrize("method", ["nearest", "bilinear", "average"])
def test_open_raster_onto_a_large_grid_uses_the_sparse_graph(tmp_path, monkeypatch, method):
    rng = np.random.default_rng(1)
    data = rng.integers(1, 1000, (1, 64, 64), dtype="uint16")
    path = _write_tif(tmp_path / "a.tif", data, Affine(30, 0, 400000, 0, -30, 5000000), nodata=0)
    # the same CRS, half outside: odc-geo's graph (small grid) and the sparse one agree exactly
    g = xf.grid((399000, 4998500, 400990, 5001000), 32633, 20)
    small = xf.open_raster(path, grid=g, chunks=16, resampling=method)
    monkeypatch.setattr(raster_module, "_SPARSE_FROM_CHUNKS", 0)
    with raise_if_dask_computes():
        sparse = xf.open_raster(path, grid=g, chunks=16, resampling=method)
    assert any(isinstance(v, SparseChunkLayer) for v in sparse.data.dask.layers.values())
    xr.testing.assert_identical(sparse.compute(), small.compute())
    assert np.isfinite(sparse.values).sum() > 1000


def test_open_raster_onto_a_global_grid_is_fast(tmp_path):
    data = np.arange(64 * 64, dtype="float32").reshape(1, 64, 64)
    path = _write_tif(tmp_path / "b.tif", data, Affine(10, 0, 500000, 0, -10, 4000640))
    dst = xf.grid((-180, -90, 180, 90), 4326, 0.001)
    start = time.perf_counter()
    cube = xf.open_raster(path, grid=dst)
    assert time.perf_counter() - start < 5
    layer = next(v for v in cube.data.dask.layers.values() if isinstance(v, SparseChunkLayer))
    assert len(layer.tasks) <= 4 and np.prod(cube.data.numblocks) > 60_000
    window = cube.isel(y=slice(53_800, 53_900), x=slice(194_950, 195_050)).values
    assert np.isfinite(window).sum() > 10
    assert np.nanmin(window) >= 0 and np.nanmax(window) < 64 * 64


def _stac_item(tmp_path, name, transform, data):
    import datetime

    import pystac

    path = _write_tif(tmp_path / f"{name}.tif", data, transform)
    item = pystac.Item(name, None, None, datetime.datetime(2020, 1, 1), {})
    fields = {
        "proj:epsg": 32633,
        "proj:shape": list(data.shape[1:]),
        "proj:transform": list(transform)[:6],
    }
    item.add_asset("b1", pystac.Asset(str(path), media_type="image/tiff", extra_fields=fields))
    return item


def test_open_stac_onto_a_large_grid_keeps_tasks_where_assets_reach(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    data = rng.random((1, 48, 48)).astype(np.float32)
    item = _stac_item(tmp_path, "a", Affine(30, 0, 500000, 0, -30, 4001440), data)
    g = xf.grid((14.95, 36.09, 15.05, 36.17), 4326, 0.0002)
    dense = xf.open_stac([item], grid=g, chunks=32)
    monkeypatch.setattr(stac_module, "_SPARSE_FROM_CHUNKS", 0)
    with raise_if_dask_computes():
        sparse = xf.open_stac([item], grid=g, chunks=32)
    layer = next(v for v in sparse.data.dask.layers.values() if isinstance(v, SparseChunkLayer))
    assert 0 < len(layer.tasks) < np.prod(sparse.data.numblocks)
    xr.testing.assert_identical(sparse.compute(), dense.compute())
    assert np.isfinite(sparse.values).sum() > 1000


def test_write_zarr_stores_only_the_chunks_with_data(tmp_path):
    src = xf.grid((500000, 4000000, 500640, 4000640), 32633, 10)
    cube = _cube(src, chunks=(32, 32), lead=1)
    out = xf.resample(cube, xf.grid((14, 35, 16, 37), 4326, 0.001), "bilinear", chunks=256)
    assert np.prod(out.data.numblocks) == 64
    store = tmp_path / "out.zarr"
    xf.write_zarr({"v": out}, store)
    # chunk files of the (band, y, x) array: "i.j.k" (Zarr v2) or c/i/j/k (Zarr v3)
    chunk_files = [
        p
        for p in store.rglob("*")
        if p.is_file()
        and (
            re.fullmatch(r"\d+\.\d+\.\d+", p.name)
            or (p.parent.parent.parent.name == "c" and p.name.isdigit())
        )
    ]
    # the empty chunks equal the fill value (NaN) and are not written
    assert 1 <= len(chunk_files) <= len(_tasks(out.data).tasks) < 64
    back = xf.open_zarr(store, name="v")
    np.testing.assert_array_equal(back.values, out.values)
