"""The streaming Zarr writer: regions in two dimensions, bounded working set, typed errors."""

from __future__ import annotations

import json
import threading
import weakref
from functools import partial

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.errors import InputError, MissingFileError, SourceError
from xfusion.grids import geobox_of
from xfusion.io.store import PROGRESS_FILE, open_zarr, store_is_complete, write_zarr
from xfusion.testing import raise_if_dask_computes


class LiveBlocks:
    """Counts the input blocks alive at once (a block dies when its last reference goes)."""

    def __init__(self) -> None:
        self.now = self.peak = self.made = 0
        self._lock = threading.Lock()

    def __dask_tokenize__(self) -> tuple[str, int]:  # one counter, one token
        return ("LiveBlocks", id(self))

    def _done(self) -> None:
        with self._lock:
            self.now -= 1

    def make(self, block: np.ndarray, block_info=None) -> np.ndarray:
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        out = np.add.outer(np.arange(y0, y1, dtype=np.float32), np.arange(x0, x1) * 1e-3)
        out = out.astype(np.float32)
        with self._lock:
            self.now += 1
            self.made += 1
            self.peak = max(self.peak, self.now)
        weakref.finalize(out, self._done)
        return out


def _stencil(live: LiveBlocks, n: int = 8, chunk: int = 8, halo: int = 2) -> xr.DataArray:
    """A lazy ``(y, x)`` field through a computation with a halo (each block sees neighbours)."""
    size = n * chunk
    source = da.empty((size, size), chunks=chunk, dtype=np.float32).map_blocks(
        live.make, dtype=np.float32
    )
    doubled = source.map_overlap(lambda b: b * 2, depth=halo, boundary="reflect", dtype=np.float32)
    coords = {"y": np.arange(size), "x": np.arange(size)}
    return xr.DataArray(doubled, dims=("y", "x"), coords=coords)


def _reference(n: int = 8, chunk: int = 8) -> np.ndarray:
    size = n * chunk
    return 2 * np.add.outer(np.arange(size, dtype=np.float32), np.arange(size) * 1e-3).astype(
        np.float32
    )


@pytest.mark.parametrize("region", [{"y": 1, "x": 1}, {"y": 2, "x": 3}, {"x": 2}, None])
def test_regions_write_the_same_values(tmp_path, region):
    live = LiveBlocks()
    path = write_zarr({"f": _stencil(live)}, tmp_path / "o.zarr", region_chunks=region)
    assert store_is_complete(path) and not (path / PROGRESS_FILE).exists()
    np.testing.assert_array_equal(xr.open_zarr(path, group="f")["f"].values, _reference())
    assert live.made == 64  # every input block computed once, whatever the regions


def test_regions_compute_each_input_block_once_and_hold_about_a_row(tmp_path):
    with dask.config.set(scheduler="threads", num_workers=2):
        live = LiveBlocks()
        path = write_zarr(
            {"f": _stencil(live)}, tmp_path / "a.zarr", region_chunks={"y": 1, "x": 1}
        )
        # the blocks a halo reaches into are kept for the next regions, not computed again
        assert live.made == 64
        # ... and what is kept is about one row of the 8 × 8 blocks: the next row's blocks
        # already computed for a halo, the slices the next row takes from this one, and one
        # block per thread (2) computed ahead of the first output chunk not yet written
        assert 8 <= live.peak <= 8 + 2 + 2
    np.testing.assert_array_equal(xr.open_zarr(path, group="f")["f"].values, _reference())


def test_without_a_cache_regions_recompute_their_halo_and_hold_a_neighbourhood(tmp_path):
    with dask.config.set(scheduler="threads", num_workers=2):
        live = LiveBlocks()
        path = write_zarr(
            {"f": _stencil(live)},
            tmp_path / "a.zarr",
            region_chunks={"y": 1, "x": 1},
            cache_mb=0,
        )
        # a 1×1-chunk region needs its block and its 8 neighbours, never more
        assert live.peak <= 9
        # ... at the price of computing each inner block 9 times (3×3 regions see it), each
        # edge block 6 times and each corner block 4 times
        assert live.made == 36 * 9 + 24 * 6 + 4 * 4
    np.testing.assert_array_equal(xr.open_zarr(path, group="f")["f"].values, _reference())


def test_a_small_cache_keeps_what_is_needed_soonest(tmp_path):
    with dask.config.set(scheduler="threads", num_workers=2):
        live = LiveBlocks()
        block = 8 * 8 * 4  # bytes of one float32 input block
        path = write_zarr(
            {"f": _stencil(live)},
            tmp_path / "a.zarr",
            region_chunks={"y": 1, "x": 1},
            cache_mb=3 * block / 2**20,
        )
        # room for the right-hand neighbours the next region needs, not for the next row
        assert 64 < live.made < 36 * 9 + 24 * 6 + 4 * 4
    np.testing.assert_array_equal(xr.open_zarr(path, group="f")["f"].values, _reference())


class _Counting(Callback):
    """Dask's local callbacks, counted: computations started and tasks finished."""

    def __init__(self) -> None:
        super().__init__()
        self.starts = self.finishes = self.tasks = 0

    def _start(self, dsk) -> None:
        self.starts += 1

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        self.tasks += 1

    def _finish(self, dsk, state, errored) -> None:
        self.finishes += 1


def test_regions_stream_through_one_pass_seen_by_dask_callbacks(tmp_path):
    # progress bars and xfusion's BLAS-thread limit are Dask callbacks: the whole write is one
    # computation to them, and every task reports, with or without a small cache
    for cache_mb in (512, 3 * 8 * 8 * 4 / 2**20):
        with dask.config.set(scheduler="threads", num_workers=2), _Counting() as counting:
            live = LiveBlocks()
            path = write_zarr(
                {"f": _stencil(live)},
                tmp_path / f"{cache_mb}.zarr",
                region_chunks={"y": 1, "x": 1},
                cache_mb=cache_mb,
            )
        assert counting.starts == counting.finishes == 1
        assert counting.tasks >= 64 + live.made  # every output chunk and every input block
        np.testing.assert_array_equal(xr.open_zarr(path, group="f")["f"].values, _reference())


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "512", None])
def test_bad_cache_mb(tmp_path, bad):
    cube = xr.DataArray(da.zeros((4, 4), chunks=2), dims=("y", "x"))
    with pytest.raises(InputError, match=r"cache_mb must be a number of MiB >= 0"):
        write_zarr({"a": cube}, tmp_path / "o.zarr", cache_mb=bad)
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.partial").exists()


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_progress_keys_name_both_dimensions(tmp_path, scheduler):
    live = LiveBlocks()
    cube = _stencil(live, n=4)

    def fail_late(block, block_info=None):
        if block_info[None]["array-location"][0][0] >= 16:
            raise RuntimeError("late rows failed")
        return block

    broken = cube.copy(data=cube.data.map_blocks(fail_late, dtype=np.float32))
    with dask.config.set(scheduler=scheduler), pytest.raises(RuntimeError, match="late"):
        write_zarr({"f": broken}, tmp_path / "o.zarr", region_chunks={"y": 2, "x": 2})
    # with threads too, every region before the first failing one is written and recorded
    progress = json.loads((tmp_path / "o.zarr.partial" / PROGRESS_FILE).read_text())
    assert progress["regions"] == ["f/y=0:16,x=0:16", "f/y=0:16,x=16:32"]
    assert progress["n_regions"] == 4
    write_zarr({"f": cube}, tmp_path / "o.zarr", region_chunks={"y": 2, "x": 2}, resume=True)
    np.testing.assert_array_equal(
        xr.open_zarr(tmp_path / "o.zarr", group="f")["f"].values, _reference(n=4)
    )


def _chunk_files(store) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted((store / "f" / "f").iterdir())
        if not p.name.startswith(".")
    }


def test_resume_with_a_halo_is_bit_identical_and_computes_only_what_is_missing(tmp_path):
    def fail_late(block, block_info=None):
        if block_info[None]["array-location"][0][0] >= 40:
            raise RuntimeError("late rows failed")
        return block

    regions = {"y": 2, "x": 4}  # 2 × 4 regions of 2 × 4 blocks of 8 × 8 px
    first = _stencil(LiveBlocks())
    broken = first.copy(data=first.data.map_blocks(fail_late, dtype=np.float32))
    with pytest.raises(RuntimeError, match="late rows"):
        write_zarr({"f": broken}, tmp_path / "o.zarr", region_chunks=regions)
    progress = json.loads((tmp_path / "o.zarr.partial" / PROGRESS_FILE).read_text())
    assert progress["regions"] == [
        "f/y=0:16,x=0:32",
        "f/y=0:16,x=32:64",
        "f/y=16:32,x=0:32",
        "f/y=16:32,x=32:64",
    ]
    live = LiveBlocks()
    path = write_zarr(
        {"f": _stencil(live)}, tmp_path / "o.zarr", region_chunks=regions, resume=True
    )
    # rows 32:64 are 4 block rows; their halo reaches one block row up: 5 rows of 8 blocks
    assert live.made == 5 * 8
    whole = write_zarr({"f": _stencil(LiveBlocks())}, tmp_path / "w.zarr", region_chunks=regions)
    assert _chunk_files(path) == _chunk_files(whole)  # bit-identical chunk files
    np.testing.assert_array_equal(xr.open_zarr(path, group="f")["f"].values, _reference())


_CALLS: dict[str, int] = {}
_CALLS_LOCK = threading.Lock()


def _counted_block(tag: str, block: np.ndarray, block_info=None) -> np.ndarray:
    """``LiveBlocks.make`` without the object: a function a Dask client can pickle by name."""
    (y0, y1), (x0, x1) = block_info[None]["array-location"]  # Dask's meta probe stops here
    with _CALLS_LOCK:
        _CALLS[tag] = _CALLS.get(tag, 0) + 1
    return np.add.outer(np.arange(y0, y1), np.arange(x0, x1) * 1e-3).astype(np.float32)


def test_shared_tasks_on_a_distributed_client(tmp_path):
    distributed = pytest.importorskip("distributed")
    source = da.empty((64, 64), chunks=8, dtype=np.float32).map_blocks(
        partial(_counted_block, tmp_path.name), dtype=np.float32
    )
    doubled = source.map_overlap(lambda b: b * 2, depth=2, boundary="reflect", dtype=np.float32)
    with (
        distributed.LocalCluster(
            n_workers=1, processes=False, threads_per_worker=2, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        path = write_zarr(
            {"f": xr.DataArray(doubled, dims=("y", "x"))},
            tmp_path / "o.zarr",
            region_chunks={"y": 2},
        )
    # kept results travel back to the client as values: no input block is computed twice
    assert _CALLS[tmp_path.name] == 64
    np.testing.assert_array_equal(xr.open_zarr(path, group="f")["f"].values, _reference())


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_region_chunks(tmp_path, bad):
    cube = xr.DataArray(da.zeros((4, 4), chunks=2), dims=("y", "x"))
    with pytest.raises(InputError, match=r"region_chunks\['y'\] must be a positive number"):
        write_zarr({"a": cube}, tmp_path / "o.zarr", region_chunks={"y": bad})
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.partial").exists()


def test_exported_at_top_level():
    assert xf.write_zarr is write_zarr and xf.store_is_complete is store_is_complete


# --- group names: checked before anything is written -------------------------------------------


def _small_cube() -> xr.DataArray:
    ascending = {"y": np.arange(4.0), "x": np.arange(4.0)}
    return synthetic_cube(da.zeros((2, 4, 4), chunks=2), ["B04", "QA60"], coords=ascending)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../escape", "contains '/'"),
        ("a/b", "contains '/'"),
        ("a\\b", "contains '\\\\'"),
        ("a\0b", "contains '\\x00'"),
        ("", "is empty"),
        (".", "starts with '.'"),
        ("..", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("y", "is also a dimension or coordinate"),
        ("band", "is also a dimension or coordinate"),
        ("spatial_ref", "is also a dimension or coordinate"),
        (3, "is a int"),
    ],
)
def test_bad_group_names_are_refused_before_anything_is_written(tmp_path, name, why):
    cube = _small_cube().rio.write_crs("EPSG:32633")
    store = tmp_path / "out" / "o.zarr"
    store.parent.mkdir()
    with pytest.raises(InputError, match="group name") as caught:
        write_zarr({"ok": cube, name: cube}, store)
    message = str(caught.value)
    assert repr(name) in message and why in message, message
    assert "must be a non-empty str" in message  # the rule is spelt out
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out"]  # nothing written anywhere


@pytest.mark.parametrize(
    ("cubes", "match"),
    [
        ({}, "cubes is empty; expected at least one cube"),
        ([("a", None)], "cubes must be a mapping of group name to DataArray"),
        ({"a": xr.Dataset({"v": ("x", [1.0])})}, "cube 'a' is a Dataset; expected"),
    ],
)
def test_empty_or_wrong_cubes_are_refused(tmp_path, cubes, match):
    with pytest.raises(InputError, match=match):
        write_zarr(cubes, tmp_path / "o.zarr")
    assert list(tmp_path.iterdir()) == []


def test_a_name_with_dots_inside_is_fine(tmp_path):
    cube = _small_cube()
    store = write_zarr({"s2.v1_prediction": cube}, tmp_path / "o.zarr")
    assert list(xf.open_zarr(store)) == ["s2.v1_prediction"]


# --- open_zarr: the reader ---------------------------------------------------------------------


def _rich_cube() -> xr.DataArray:
    """A chunked (time, band, y, x) cube on a UTM grid with band kinds, scaling and attrs."""
    g = xf.grid((330000, 3050000, 330500, 3050300), "EPSG:32645", 100)
    rng = np.random.default_rng(0)
    values = rng.random((2, 3, 3, 5)).astype(np.float32)
    values[0, 1, 0, 0] = np.nan
    cube = synthetic_cube(
        da.from_array(values, chunks=(1, 3, 2, 2)),
        ["B04", "QA60", "label"],
        times=["2020-01-01", "2020-02-01"],
        coords={"y": g.coords["y"].values, "x": g.coords["x"].values},
        crs="EPSG:32645",
        name="whatever",
    ).assign_attrs(units="1", long_name="test cube")
    cube = xf.bands.set_band_kinds(cube, {"label": "categorical"})
    return xf.bands.set_band_scaling(cube, {"B04": (1e-4, 0.0), "label": (1.0, 0.0)})


def test_open_zarr_round_trip_is_identical(tmp_path):
    cube = _rich_cube()
    other = (cube.isel(band=0, drop=True) * 2).rename("other")
    store = write_zarr({"prediction": cube, "doubled": other}, tmp_path / "p.zarr")
    with raise_if_dask_computes():  # opening reads metadata only
        cubes = xf.open_zarr(store)
    assert list(cubes) == ["prediction", "doubled"]  # in the order written
    got = cubes["prediction"]
    assert got.chunks == cube.chunks  # lazy, chunked as written
    xr.testing.assert_identical(got, cube.rename("prediction"))
    xr.testing.assert_identical(cubes["doubled"], other.rename("doubled"))
    assert got["band_kind"].dtype == object and list(got["band_kind"].values) == [
        "continuous",
        "flags",
        "categorical",
    ]
    np.testing.assert_array_equal(got["band_scale"].values, [1e-4, np.nan, 1.0])
    assert xf.bands.band_kinds(got) == xf.bands.band_kinds(cube)
    assert xf.bands.band_scaling(got) == xf.bands.band_scaling(cube)
    assert geobox_of(got) == geobox_of(cube) and got.rio.crs.to_epsg() == 32645
    one = xf.open_zarr(store, "doubled", chunks={"x": 5})
    assert one.name == "doubled" and one.chunks == ((1, 1), (2, 1), (5,))
    np.testing.assert_array_equal(one.values, other.values)


def test_open_zarr_names_the_cubes_when_the_name_is_wrong(tmp_path):
    store = write_zarr({"b": _small_cube(), "a": _small_cube()}, tmp_path / "o.zarr")
    with pytest.raises(InputError, match=r"no cube 'c' in .*o\.zarr'; its cubes are \['b', 'a'\]"):
        xf.open_zarr(store, "c")


def test_open_zarr_refuses_a_partial_store(tmp_path):
    cube = _small_cube()

    def fail(block, block_info=None):
        if block_info[None]["array-location"][1][0] >= 2:
            raise RuntimeError("late rows failed")
        return block

    broken = cube.copy(data=cube.data.map_blocks(fail, dtype=cube.dtype))
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="late"):
        write_zarr({"f": broken}, tmp_path / "o.zarr")
    partial = tmp_path / "o.zarr.partial"
    assert partial.is_dir() and not (tmp_path / "o.zarr").exists()
    with pytest.raises(MissingFileError, match=r"o\.zarr\.partial' is a partial store .*resume"):
        xf.open_zarr(tmp_path / "o.zarr")
    with pytest.raises(SourceError, match="is not a complete store written by xfusion"):
        xf.open_zarr(partial)
    # a Zarr store of another program is refused too (it has no completion mark)
    cube.to_dataset(name="v").to_zarr(tmp_path / "foreign.zarr", zarr_format=2)
    with pytest.raises(SourceError, match="no 'xfusion_complete' mark"):
        xf.open_zarr(tmp_path / "foreign.zarr", "v")


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_open_zarr_bad_chunks(tmp_path, bad):
    store = write_zarr({"a": _small_cube()}, tmp_path / "o.zarr")
    with pytest.raises(
        InputError, match=r"^open_zarr chunks: the chunk size for 'x' must be a positive int"
    ):
        xf.open_zarr(store, "a", chunks={"x": bad})


def test_open_zarr_exported_at_top_level():
    assert xf.open_zarr is open_zarr and "open_zarr" in xf.__all__
