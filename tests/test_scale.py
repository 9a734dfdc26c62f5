"""A blockwise prediction of a cube too large to hold streams to Zarr within bounded memory.

The cube (9 bands, float32) is generated block by block by Dask's seeded generator, never held;
its prediction by a pixel ridge model is written with ``to_zarr(compute=True)`` on the local
threaded scheduler and on a 2-worker ``LocalCluster``. The peak growth of the resident memory of
the whole process tree (this process, the nannies and workers), sampled with psutil, must stay
far below the size the cube would take in memory. ``benchmarks/bench_scale.py`` runs the same at
full size with a U-Net.
"""

from __future__ import annotations

import importlib
import os
import threading
import time

import dask
import dask.array as dsa
import numpy as np
import psutil
import pytest
import threadpoolctl
import xarray as xr

from tests.conftest import synthetic_cube
from xfusion.models.predict import predict
from xfusion.models.ridge import Ridge

N_BANDS, SIZE, CHUNK = 9, 4096, 512
EAGER_BYTES = N_BANDS * SIZE * SIZE * 4  # 604 MB if materialised
BANDS = [f"b{k}" for k in range(N_BANDS)]


class TreePeakRSS:
    """Peak growth of the summed RSS of this process and its descendants (bytes)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self.samples = 0

    @staticmethod
    def _rss() -> int:
        root = psutil.Process()
        total = 0
        for proc in (root, *root.children(recursive=True)):
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # exited between listing and reading
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self.samples += 1
            time.sleep(self.interval)

    def __enter__(self) -> TreePeakRSS:
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    rows = rng.random((500, N_BANDS))
    model = Ridge(alpha=0.1).fit(rows, rows @ rng.normal(size=(N_BANDS, 2)) + 0.5)
    return model.set_bands(BANDS)


def cube(size: int = SIZE, chunk: int = CHUNK, seed: int = 0) -> xr.DataArray:
    data = dsa.random.default_rng(seed).random(
        (N_BANDS, size, size), chunks=(-1, chunk, chunk), dtype=np.float32
    )
    return synthetic_cube(data, BANDS)


def write(pred: xr.DataArray, store) -> None:
    ds = pred.assign_coords(band=pred.band.astype(object)).to_dataset(name="prediction")
    ds.to_zarr(store, mode="w", compute=True, consolidated=False)


def check_windows(store, source: xr.DataArray, model, n: int = 4) -> None:
    """The store equals the ridge formula applied to the source blocks, on sampled blocks."""
    out = xr.open_zarr(store, consolidated=False)["prediction"]
    assert out.shape == (2, SIZE, SIZE) and out.dtype == np.float32
    nblocks = SIZE // CHUNK
    rng = np.random.default_rng(1)
    picks = {(0, 0), (nblocks - 1, nblocks - 1)}
    while len(picks) < n:
        picks.add(tuple(int(v) for v in rng.integers(0, nblocks, 2)))
    for by, bx in sorted(picks):
        block = source.data.blocks[0, by, bx].compute(scheduler="sync")
        rows = block.reshape(N_BANDS, -1).T.astype(np.float64)
        expected = (rows @ model.coef_.T + model.intercept_).T.reshape(2, CHUNK, CHUNK)
        window = (
            slice(None),
            slice(by * CHUNK, (by + 1) * CHUNK),
            slice(bx * CHUNK, (bx + 1) * CHUNK),
        )
        np.testing.assert_allclose(out[window].values, expected, rtol=1e-5, atol=1e-6)


def test_threaded_streaming_prediction_has_bounded_memory(model, tmp_path):
    source = cube()
    pred = predict(source, model)
    assert pred.nbytes == 2 * SIZE * SIZE * 4
    # one BLAS thread per Dask thread, as the nannies set for the cluster's workers: two
    # threads each running a multi-threaded BLAS on two cores are several times slower
    with dask.config.set(scheduler="threads"), threadpoolctl.threadpool_limits(1, "blas"):
        write(predict(cube(256, 128), model), tmp_path / "warm.zarr")  # imports, thread pools
        with TreePeakRSS() as mem:
            write(pred, tmp_path / "prediction.zarr")
    assert mem.samples > 5
    assert mem.growth < EAGER_BYTES / 2, f"peak RSS grew {mem.growth / 2**20:.0f} MiB"
    check_windows(tmp_path / "prediction.zarr", source, model)


def test_local_cluster_streaming_prediction_has_bounded_memory(model, tmp_path):
    distributed = pytest.importorskip("distributed")
    source = cube()
    pred = predict(source, model)
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(importlib.import_module, "xfusion.models.ridge")
        write(predict(cube(256, 128), model), tmp_path / "warm.zarr")  # imports in the workers
        with TreePeakRSS() as mem:
            write(pred, tmp_path / "prediction.zarr")
        workers = set(client.run(os.getpid).values())
        assert workers <= {p.pid for p in psutil.Process().children(recursive=True)}
    assert mem.samples > 5
    assert mem.growth < EAGER_BYTES / 2, f"peak tree RSS grew {mem.growth / 2**20:.0f} MiB"
    check_windows(tmp_path / "prediction.zarr", source, model)


def test_a_preset_refuses_bands_of_another_product():

    import xfusion as xf
    from xfusion.errors import ScaleError

    dn = np.full((3, 2, 2), 40000.0, dtype="float32")
    cube = synthetic_cube(dn, ["SR_B4", "SR_B5", "ST_B10"])
    # surface temperature scaled as reflectance would be silently wrong (0.9 instead of 285.7 K)
    with pytest.raises(ScaleError, match=r"'ST_B10' \(Landsat C2 temperature\)"):
        xf.scale(cube, "LANDSAT_C2_SR")
    with pytest.raises(ScaleError, match=r"'SR_B4' \(Landsat C2 reflectance\)"):
        xf.scale(cube, "LANDSAT_C2_ST")
    with pytest.raises(ScaleError, match="'SR_B4'"):
        xf.scale(cube.sel(band=["SR_B4"]), "S2")
    sr = xf.scale(cube.sel(band=["SR_B4", "SR_B5"]), "LANDSAT_C2_SR")
    np.testing.assert_allclose(sr.values, 40000 * 2.75e-5 - 0.2, rtol=1e-6)
    st = xf.scale(cube.sel(band=["ST_B10"]), "LANDSAT_C2_ST")
    np.testing.assert_allclose(st.values, 40000 * 0.00341802 + 149.0, rtol=1e-6)
    # names that say nothing about the product are scaled as asked
    plain = cube.assign_coords(band=["red", "nir", "b3"])
    assert float(xf.scale(plain, "S2").values[0, 0, 0]) == pytest.approx(4.0)
