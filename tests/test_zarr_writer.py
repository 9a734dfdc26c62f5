"""The streaming Zarr writer: regions in two dimensions, bounded working set, typed errors."""

from __future__ import annotations

import json
import threading
import weakref

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import xfusion as xf
from xfusion.errors import InputError
from xfusion.io.zarr import PROGRESS_FILE, store_is_complete, write_zarr


class LiveBlocks:
    """Counts the input blocks alive at once (a block dies when its last reference goes)."""

    def __init__(self) -> None:
        self.now = self.peak = self.made = 0
        self._lock = threading.Lock()

    def _done(self) -> None:
        with self._lock:
            self.now -= 1

    def make(self, block: np.ndarray, block_info=None) -> np.ndarray:
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        out = np.add.outer(np.arange(y0, y1, dtype=np.float32), np.arange(x0, x1) * 1e-3)
        with self._lock:
            self.now += 1
            self.made += 1
            self.peak = max(self.peak, self.now)
        weakref.finalize(out, self._done)
        return out.astype(np.float32)


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


def test_regions_bound_the_blocks_held_at_once(tmp_path):
    with dask.config.set(scheduler="threads", num_workers=2):
        live = LiveBlocks()
        write_zarr({"f": _stencil(live)}, tmp_path / "a.zarr", region_chunks={"y": 1, "x": 1})
        # a 1×1-chunk region needs its block and its 8 neighbours, never more
        assert live.peak <= 9
        # ... at the price of computing each input block up to 9 times (3×3 regions see it)
        assert 64 < live.made <= 9 * 64


def test_progress_keys_name_both_dimensions(tmp_path):
    live = LiveBlocks()
    cube = _stencil(live, n=4)

    def fail_late(block, block_info=None):
        if block_info[None]["array-location"][0][0] >= 16:
            raise RuntimeError("late rows failed")
        return block

    broken = cube.copy(data=cube.data.map_blocks(fail_late, dtype=np.float32))
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="late"):
        write_zarr({"f": broken}, tmp_path / "o.zarr", region_chunks={"y": 2, "x": 2})
    progress = json.loads((tmp_path / "o.zarr.partial" / PROGRESS_FILE).read_text())
    assert progress["regions"] == ["f/y=0:16,x=0:16", "f/y=0:16,x=16:32"]
    assert progress["n_regions"] == 4
    write_zarr({"f": cube}, tmp_path / "o.zarr", region_chunks={"y": 2, "x": 2}, resume=True)
    np.testing.assert_array_equal(
        xr.open_zarr(tmp_path / "o.zarr", group="f")["f"].values, _reference(n=4)
    )


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_region_chunks(tmp_path, bad):
    cube = xr.DataArray(da.zeros((4, 4), chunks=2), dims=("y", "x"))
    with pytest.raises(InputError, match=r"region_chunks\['y'\] must be a positive number"):
        write_zarr({"a": cube}, tmp_path / "o.zarr", region_chunks={"y": bad})
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.partial").exists()


def test_exported_at_top_level():
    assert xf.write_zarr is write_zarr and xf.store_is_complete is store_is_complete
