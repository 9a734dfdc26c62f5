"""RBF kernel ridge with Nyström features on 200 k samples: xfusion (JAX) vs scikit-learn.

xfusion's ``KernelRidge(method="nystroem")`` against scikit-learn's ``Nystroem`` + ``Ridge``
pipeline with the same landmarks (the same ``random_state`` draws the same samples), both on the
same in-memory data; R² is measured on held-out samples and must agree within 0.01. Both sides
time ``fit`` on the same rows (prediction is timed separately, on the held-out rows).

scikit-learn is timed twice: as installed (OpenBLAS with one thread per core) and with BLAS
limited to one thread (``threadpoolctl``). On a shared, oversubscribed machine OpenBLAS's
spinning worker threads can make the multi-threaded run several times slower than the
single-threaded one, so both numbers are kept; xfusion's Gram products run in XLA (its own
thread pool) and are not affected by that setting. The fits are timed round-robin (one run
each per round); the CPU seconds of the process (all threads, ``time.process_time``) of every
timed fit are recorded as well.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import Ridge as SkRidge
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from benchmarks._util import case_result, measure, measure_interleaved
from xfusion.models.ridge import KernelRidge

CASE = "kernel_ridge"


def make_data(n: int, p: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth non-linear target of ``p`` reflectance-like features."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.0, 1.0, size=(n, p))
    y = np.sin(3 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.5 * np.cos(2 * X[:, 3:].sum(axis=1))
    return X, y + rng.normal(scale=0.05, size=n)


def run(*, smoke: bool = False, repeats: int = 3) -> dict:
    n, p, m = (20_000, 11, 100) if smoke else (200_000, 11, 300)
    alpha, gamma = 1e-3, 0.5
    X, y = make_data(n + n // 4, p)
    X_train, y_train, X_test, y_test = X[:n], y[:n], X[n:], y[n:]

    def ours_fit():
        model = KernelRidge(alpha=alpha, gamma=gamma, n_components=m, random_state=0)
        return model.fit(X_train, y_train)

    def sk_fit():
        nys = Nystroem(gamma=gamma, n_components=m, random_state=0)
        return make_pipeline(nys, SkRidge(alpha=alpha)).fit(X_train, y_train)

    def sk_fit_one_thread():
        with threadpool_limits(limits=1, user_api="blas"):
            return sk_fit()

    runs, cpu_s = measure_interleaved(
        {"xfusion": ours_fit, "scikit-learn": sk_fit, "scikit-learn 1 thread": sk_fit_one_thread},
        repeats=repeats,
    )
    ours, sk, sk_one = runs["xfusion"], runs["scikit-learn"], runs["scikit-learn 1 thread"]
    r2_ours = r2_score(y_test, ours["result"].predict(X_test))
    r2_sk = r2_score(y_test, sk["result"].predict(X_test))
    assert abs(r2_ours - r2_sk) <= 0.01, (r2_ours, r2_sk)
    predict_ours = measure(lambda: ours["result"].predict(X_test), repeats=repeats)
    predict_sk = measure(lambda: sk["result"].predict(X_test), repeats=repeats)
    extra = {
        "r2": {"xfusion": r2_ours, "scikit-learn": r2_sk},
        "predict_s": {
            "xfusion": predict_ours["median_s"],
            "scikit-learn": predict_sk["median_s"],
            "n_samples": int(X_test.shape[0]),
        },
        "fit_cpu_s_median": cpu_s,
        "target": ">= 1.0x scikit-learn Nystroem + Ridge, R2 within 0.01",
    }
    return case_result(
        CASE,
        xfusion=ours,
        competitors={
            "scikit-learn Nystroem + Ridge": sk,
            "scikit-learn Nystroem + Ridge (BLAS 1 thread)": sk_one,
        },
        params={
            "n_samples": n,
            "n_features": p,
            "n_components": m,
            "alpha": alpha,
            "gamma": gamma,
            "dtype": "float64",
            "smoke": smoke,
            "repeats": repeats,
        },
        packages=("scikit-learn", "jax", "threadpoolctl"),
        extra=extra,
    )


if __name__ == "__main__":
    result = run(smoke="--smoke" in sys.argv)
    out = Path(__file__).resolve().parent / "results" / f"{CASE}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
