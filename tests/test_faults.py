"""Faults survived on a Dask cluster: a worker killed mid-prediction, mid-way through a Zarr write.

Two process workers (one thread each) under nannies, which restart a killed worker. A worker
process is killed with SIGKILL once some but not all blocks are done; the scheduler recomputes
what it held and the result must be bitwise identical to an undisturbed run.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
import time

import dask
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr

from xfusion.models.predict import predict
from xfusion.models.ridge import Ridge

distributed = pytest.importorskip("distributed")

BANDS = ["B02", "B03", "B04", "B08"]
SHAPE, CHUNK = (4, 384, 384), 48  # 64 blocks
BATCH = 16  # rows per model call: a few hundred calls per block, so blocks take a while
TIMEOUT = 90


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(importlib.import_module, "xfusion.models.ridge")
        yield client


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    rows = rng.random((200, len(BANDS)))
    return Ridge(alpha=0.1).fit(rows, rows @ [1.0, -2.0, 0.5, 3.0] + 0.25).set_bands(BANDS)


def lazy_prediction(model, seed=1) -> xr.DataArray:
    """A cube generated block by block on the workers (Dask's seeded generator) and predicted."""
    data = dsa.random.default_rng(seed).random(SHAPE, chunks=(-1, CHUNK, CHUNK), dtype=np.float32)
    cube = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": BANDS})
    return predict(cube, model, batch_size=BATCH)


def kill_a_busy_worker(client, progress, total) -> dict:
    """SIGKILL the worker process holding the most results once ``progress()`` is in (0, total).

    Returns what was seen at the kill: blocks done, keys lost with the worker, its address.
    """
    deadline = time.monotonic() + TIMEOUT
    while (done := progress()) < max(2, total // 8):
        assert time.monotonic() < deadline, f"only {done} of {total} blocks done in {TIMEOUT} s"
        time.sleep(0.005)
    pids = client.run(os.getpid)
    held = client.has_what()
    address = max(pids, key=lambda a: (len(held.get(a, ())), a))
    os.kill(pids[address], signal.SIGKILL)
    return {"done": done, "lost": len(held.get(address, ())), "address": address}


def wait_for_two_workers(client):
    client.wait_for_workers(2, timeout=TIMEOUT)


def test_worker_killed_mid_prediction_gives_the_undisturbed_result(client, model):
    wait_for_two_workers(client)
    expected = lazy_prediction(model).compute(scheduler="threads").values
    job = lazy_prediction(model)
    persisted = client.persist(job.data)
    futures = distributed.futures_of(persisted)
    total = len(futures)
    assert total == 64
    seen = kill_a_busy_worker(client, lambda: sum(f.done() for f in futures), total)
    assert 0 < seen["done"] < total and seen["lost"] > 0, seen  # the kill landed mid-run
    result = client.compute(persisted).result(timeout=TIMEOUT)
    assert seen["address"] not in client.scheduler_info()["workers"]  # the worker is gone
    np.testing.assert_array_equal(result, expected)
    assert np.isfinite(result).all()


def _written_chunks(store) -> int:
    """Chunk files in the store; a worker killed mid-write may leave a stray temporary file
    (Zarr writes a chunk to a hidden temporary and renames it), which is not a chunk."""
    folder = store / "prediction" / "c"
    if not folder.exists():
        return 0
    return sum(name.isdigit() for _, _, files in os.walk(folder) for name in files)


def test_worker_killed_while_streaming_to_zarr_gives_the_undisturbed_store(client, model, tmp_path):
    wait_for_two_workers(client)
    expected = lazy_prediction(model, seed=2).compute(scheduler="threads").values
    job = lazy_prediction(model, seed=2)
    ds = job.assign_coords(band=job.band.astype(object)).to_dataset(name="prediction")
    store = tmp_path / "prediction.zarr"
    total = 64
    seen: dict = {}

    def killer():
        try:
            seen.update(kill_a_busy_worker(client, lambda: _written_chunks(store), total))
        except BaseException as err:  # reported by the main thread
            seen["error"] = err

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    ds.to_zarr(store, mode="w", compute=True, consolidated=False)  # on the client's cluster
    thread.join(TIMEOUT)
    assert "error" not in seen, seen.get("error")
    assert 0 < seen["done"] < total and seen["lost"] > 0, seen
    assert _written_chunks(store) == total
    with xr.open_zarr(store, consolidated=False) as out:
        got = out["prediction"].values
    np.testing.assert_array_equal(got, expected)


def test_the_reference_is_the_local_scheduler_result(model):
    # the undisturbed reference does not depend on the scheduler or the model batch size
    with dask.config.set(scheduler="sync"):
        sync = lazy_prediction(model).values
    np.testing.assert_array_equal(sync, lazy_prediction(model).compute(scheduler="threads"))
    cube = dsa.random.default_rng(1).random(SHAPE, chunks=(-1, CHUNK, CHUNK), dtype=np.float32)
    rows = np.moveaxis(cube.compute(), 0, -1).reshape(-1, len(BANDS)).astype(np.float64)
    direct = (rows @ model.coef_ + model.intercept_).reshape(1, *SHAPE[1:])
    np.testing.assert_allclose(sync, direct, rtol=1e-6)
