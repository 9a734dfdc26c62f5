"""Ridge fit on 10 million pixels x 20 features: xfusion from a Dask array vs scikit-learn.

xfusion reduces each chunk of the Dask array to centred sufficient statistics in one pass (the
design matrix is never assembled); scikit-learn's ``Ridge`` (cholesky solver) fits the same
float64 data held in memory. Also dask-ml's ``LinearRegression`` where it is installed. The
coefficients are checked to agree to 1e-6 relative.

BLAS oversubscription (``blas_threads``): on Dask's threaded scheduler every task calling a
multi-threaded BLAS starts one BLAS thread per core on top of Dask's one thread per core.
xfusion limits BLAS/OpenMP to one thread per task while its pixel-prediction and ridge-statistics
tasks run (:mod:`xfusion._kernels.threadpool`); measured here with the limit on and off
(``TASK_THREADS = None``), interleaved, for this fit and for a pixel prediction of a
BLAS-heavy scikit-learn model (an MLP, 2 hidden layers of 256) over a 10-band cube.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dask
import dask.array
import numpy as np
from sklearn.linear_model import Ridge as SkRidge

from benchmarks._util import case_result, measure, measure_interleaved
from xfusion._kernels import threadpool
from xfusion.models.predict import predict
from xfusion.models.ridge import Ridge

CASE = "ridge"


def make_data(n: int, p: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features with offsets and scales like reflectances, a noisy linear target."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) * 0.1 + np.linspace(0.05, 0.5, p)
    y = X @ rng.normal(size=p) + 0.3 + rng.normal(scale=0.01, size=n)
    return X, y


def _with_limit(fn, limit):
    """``fn`` run with xfusion's per-task BLAS limit set to ``limit`` (None: off)."""

    def run():
        saved = threadpool.TASK_THREADS
        threadpool.TASK_THREADS = limit
        try:
            return fn()
        finally:
            threadpool.TASK_THREADS = saved

    return run


def blas_oversubscription(*, smoke: bool, repeats: int, Xd, yd, alpha: float) -> dict:
    """Threaded-scheduler runs with xfusion's one-BLAS-thread-per-task limit on and off."""
    import xarray as xr
    from sklearn.neural_network import MLPRegressor

    from benchmarks._util import measure_interleaved

    rng = np.random.default_rng(0)
    side = 128 if smoke else 1024
    bands = [f"b{i}" for i in range(10)]
    cube = xr.DataArray(
        rng.random((10, side, side), dtype=np.float32), dims=("band", "y", "x")
    ).assign_coords(band=bands)
    cube = cube.chunk({"y": side // 8, "x": -1})
    mlp = MLPRegressor(hidden_layer_sizes=(256, 256), max_iter=3, random_state=0)
    mlp.fit(rng.random((500, 10)), rng.random(500))
    pred = predict(cube, mlp, bands=bands)

    def compute_pred():
        return pred.data.compute(scheduler="threads")

    def fit():
        with dask.config.set(scheduler="threads"):
            return Ridge(alpha=alpha).fit(Xd, yd)

    out: dict = {"blas_libraries": _blas_info()}
    for name, fn in (("pixel prediction (MLP, 10 bands)", compute_pred), ("ridge fit", fit)):
        runs, cpu_s = measure_interleaved(
            {"limited": _with_limit(fn, 1), "unlimited": _with_limit(fn, None)},
            repeats=repeats,
        )
        lim, unl = runs["limited"], runs["unlimited"]
        if name.startswith("pixel"):
            np.testing.assert_allclose(lim["result"], unl["result"], rtol=1e-5, atol=1e-6)
        out[name] = {
            "limited_median_s": lim["median_s"],
            "unlimited_median_s": unl["median_s"],
            "ratio_unlimited_over_limited": unl["median_s"] / lim["median_s"],
            "limited_cpu_s": cpu_s["limited"],
            "unlimited_cpu_s": cpu_s["unlimited"],
            "times_s": {"limited": lim["times_s"], "unlimited": unl["times_s"]},
        }
    out["note"] = (
        "ratio > 1: the per-task limit is faster. With n cores the unlimited run has up to n² "
        "native threads; the gain grows with the core count (on 2 cores at most 4 threads)"
    )
    return out


def _blas_info() -> list[dict]:
    from threadpoolctl import threadpool_info

    return [
        {k: d.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
        for d in threadpool_info()
    ]


def run(*, smoke: bool = False, repeats: int = 3) -> dict:
    n, p, chunk = (200_000, 20, 50_000) if smoke else (10_000_000, 20, 500_000)
    alpha = 1e-3
    X, y = make_data(n, p)
    Xd = dask.array.from_array(X, chunks=(chunk, p))
    yd = dask.array.from_array(y, chunks=chunk)

    # interleaved rounds: a busy phase of a shared machine hits both contenders alike
    runs, cpu_s = measure_interleaved(
        {
            "xfusion": lambda: Ridge(alpha=alpha).fit(Xd, yd),
            "scikit-learn": lambda: SkRidge(alpha=alpha, solver="cholesky").fit(X, y),
        },
        repeats=repeats,
    )
    ours, sk = runs["xfusion"], runs["scikit-learn"]
    ref = sk["result"]
    np.testing.assert_allclose(ours["result"].coef_, ref.coef_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours["result"].intercept_, ref.intercept_, rtol=1e-6)
    competitors = {"scikit-learn Ridge (in memory)": sk}
    try:
        from dask_ml.linear_model import LinearRegression as DaskLinear
    except ImportError:
        dask_ml = "not installed"
    else:
        # C = 1 / alpha: the same L2 penalty weight (immaterial at this n); no compilation to warm
        dm = measure(
            lambda: DaskLinear(solver="lbfgs", penalty="l2", C=1 / alpha).fit(Xd, yd),
            repeats=repeats,
            warmup=0,
        )
        competitors["dask-ml LinearRegression"] = dm
        dask_ml = {
            "max_relative_coef_difference_vs_sklearn": float(
                np.max(np.abs(dm["result"].coef_ - ref.coef_) / np.abs(ref.coef_))
            ),
            "solver": "lbfgs (iterative: one pass over the Dask array per iteration)",
        }
    extra = {
        "blas_threads": blas_oversubscription(
            smoke=smoke, repeats=repeats, Xd=Xd, yd=yd, alpha=alpha
        ),
        "max_relative_coef_difference": float(
            np.max(np.abs(ours["result"].coef_ - ref.coef_) / np.abs(ref.coef_))
        ),
        "dask_ml": dask_ml,
        "cpu_s_median": cpu_s,
        "target": "xfusion (Dask array) at least as fast as scikit-learn Ridge in memory",
    }
    return case_result(
        CASE,
        xfusion=ours,
        competitors=competitors,
        params={
            "n_samples": n,
            "n_features": p,
            "chunk_rows": chunk,
            "dtype": "float64",
            "alpha": alpha,
            "smoke": smoke,
            "repeats": repeats,
        },
        packages=("scikit-learn", "dask-ml"),
        extra=extra,
    )


if __name__ == "__main__":
    result = run(smoke="--smoke" in sys.argv)
    out = Path(__file__).resolve().parent / "results" / f"{CASE}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
