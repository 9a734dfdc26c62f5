"""One BLAS/OpenMP thread per task while the threaded scheduler runs xfusion's pixel tasks."""

from __future__ import annotations

import threading

import dask.array as dsa
import numpy as np
from dask.callbacks import Callback
from threadpoolctl import threadpool_info

from tests.conftest import synthetic_cube
from xfusion._kernels import threadpool
from xfusion.models.predict import predict
from xfusion.models.ridge import Ridge


def blas_threads() -> set[int]:
    return {d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"}


class RecordingModel:
    """A pixel model that records the BLAS pool size each ``predict`` call sees."""

    n_features_in_ = 2
    bands_ = ("a", "b")

    def __init__(self):
        self.seen: list[set[int]] = []
        self.lock = threading.Lock()

    def predict(self, rows):
        with self.lock:
            self.seen.append(blas_threads())
        return rows @ np.array([1.0, -1.0])


def cube():
    values = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    return synthetic_cube(values, ["a", "b"], chunks={"y": 2})


def test_pixel_blocks_run_single_threaded_blas_and_restore():
    before = blas_threads()
    assert before != {1}, "needs a multi-threaded BLAS to show anything"
    model = RecordingModel()
    out = (predict(cube(), model) * 2).mean("x")  # fused keys still name the pixel task
    values = out.compute(scheduler="threads", num_workers=4)
    np.testing.assert_array_equal(values[0], 2 * (cube()[0] - cube()[1]).mean("x").values)
    assert len(model.seen) == 4
    assert all(seen == {1} for seen in model.seen)
    assert blas_threads() == before
    assert threadpool.active_limit() is None
    eager = RecordingModel()  # numpy cube: no Dask, BLAS keeps its pool
    predict(cube().compute(), eager)
    assert eager.seen == [before]


def test_other_graphs_and_the_switch_leave_blas_alone():
    before = blas_threads()
    seen = []
    dsa.ones(4, chunks=2).map_blocks(lambda b: seen.append(blas_threads()) or b).compute(
        scheduler="threads"
    )
    assert seen and all(s == before for s in seen)
    model = RecordingModel()
    threadpool.TASK_THREADS = None
    try:
        predict(cube(), model).compute(scheduler="threads")
    finally:
        threadpool.TASK_THREADS = 1
    assert all(s == before for s in model.seen)


def test_concurrent_computations_leave_the_pools_as_they_were():
    # Dask runs global callbacks for one computation at a time: computations started together
    # from several threads may run without the limit, but never leave it set, and the next
    # computation is limited again.
    before = blas_threads()
    models = [RecordingModel() for _ in range(4)]
    barrier = threading.Barrier(4)
    errors = []

    def run(model):
        try:
            barrier.wait()
            for _ in range(3):
                predict(cube(), model).compute(scheduler="threads", num_workers=2)
        except BaseException as err:  # reported below
            errors.append(err)

    workers = [threading.Thread(target=run, args=(m,)) for m in models]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    assert sum(len(m.seen) for m in models) == 4 * 3 * 4
    assert blas_threads() == before
    assert threadpool.active_limit() is None
    after = RecordingModel()
    predict(cube(), after).compute(scheduler="threads")
    assert after.seen and all(seen == {1} for seen in after.seen)
    assert blas_threads() == before


def test_ridge_fit_tasks_run_under_the_limit():
    seen = []

    class Probe(Callback):
        def _pretask(self, key, dsk, state):
            name = key[0] if isinstance(key, tuple) else key
            if "block_table" in str(name):
                seen.append(threadpool.active_limit())

    rng = np.random.default_rng(0)
    X = dsa.from_array(rng.normal(size=(400, 3)), chunks=(100, 3))
    y = dsa.from_array(rng.normal(size=400), chunks=100)
    with Probe():
        model = Ridge(alpha=1.0).fit(X, y)
    assert seen and set(seen) == {1}
    assert model.coef_.shape == (3,)
    assert threadpool.active_limit() is None
