"""Ridge and KernelRidge against scikit-learn; one-pass blockwise fitting on Dask cubes."""

from __future__ import annotations

import threading
from collections import Counter

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from dask.callbacks import Callback
from sklearn.kernel_approximation import Nystroem, RBFSampler
from sklearn.kernel_ridge import KernelRidge as SkKernelRidge
from sklearn.linear_model import Ridge as SkRidge
from sklearn.pipeline import make_pipeline

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.errors import BandError, GridError, InputError, ModelError
from xfusion.models.ridge import KernelRidge, Ridge
from xfusion.testing import raise_if_dask_computes

BANDS = ["B01", "B02", "B03", "B04"]


def close(a, b, rtol=1e-6):
    a, b = np.asarray(a, float), np.asarray(b, float)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.nanmax(np.abs(b)))


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 4)) * [1, 2, 0.5, 3] + [10, -5, 0.3, 100]
    Y = X @ rng.normal(size=(4, 2)) + rng.normal(size=(500, 2))
    w = rng.random(500)
    return X, Y, w


def make_cube(seed=0, shape=(2, 4, 15, 19)):
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) + np.arange(shape[1])[:, None, None]).astype(np.float32)
    data[rng.random(shape) < 0.03] = np.nan
    gbox = xf.grid((0, 0, shape[-1] * 30, shape[-2] * 30), "EPSG:32631", 30)
    cube = synthetic_cube(data, BANDS, grid=gbox)
    coef = np.array([1.5, -2.0, 0.5, 3.0], np.float32)
    target = (cube * xr.DataArray(coef, dims="band")).sum("band", skipna=False) + 0.7
    target = target + rng.normal(scale=0.1, size=target.shape).astype(np.float32)
    return cube, target


def cube_rows(cube, target, weight=None):
    X = cube.transpose("time", "y", "x", "band").values.reshape(-1, cube.sizes["band"])
    y = target.transpose("time", "y", "x").values.reshape(-1)
    ok = np.isfinite(X).all(1) & np.isfinite(y)
    w = None if weight is None else weight.values.reshape(-1)[ok].astype(np.float64)
    return X[ok].astype(np.float64), y[ok].astype(np.float64), w


# ----------------------------------------------------------------------------------------------
# Ridge
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_ridge_equals_sklearn(table, multi, weighted, fit_intercept):
    X, Y, w = table
    y = Y if multi else Y[:, 0]
    sw = w if weighted else None
    ours = Ridge(alpha=3.0, fit_intercept=fit_intercept).fit(X, y, sample_weight=sw)
    ref = SkRidge(alpha=3.0, fit_intercept=fit_intercept).fit(X, y, sample_weight=sw)
    close(ours.coef_, ref.coef_)
    close(ours.intercept_, ref.intercept_ if fit_intercept else np.zeros_like(ref.coef_[..., 0]))
    assert np.shape(ours.coef_) == np.shape(ref.coef_)
    close(ours.predict(X), ref.predict(X))
    # Dask table, chunked along rows and features: the same answer
    lazy = Ridge(alpha=3.0, fit_intercept=fit_intercept).fit(
        dsa.from_array(X, chunks=(77, 3)),
        dsa.from_array(y, chunks=60 if y.ndim == 1 else (60, 1)),
        sample_weight=None if sw is None else dsa.from_array(sw, chunks=101),
    )
    close(lazy.coef_, ref.coef_)
    close(lazy.predict(dsa.from_array(X, chunks=(100, 4))).compute(), ref.predict(X))


def test_ridge_beta_weighting_of_two_sets(table):
    """The cloud-masking loss β/n‖P‖² + (1−β)/m‖E‖² + λ‖W‖² as sample weights."""
    X, Y, _ = table
    beta, lam = 0.3, 1e-3
    P, E = slice(0, 200), slice(200, 500)
    n, m = 200, 300
    w = np.r_[np.full(n, beta / n), np.full(m, (1 - beta) / m)]
    ours = Ridge(alpha=lam, fit_intercept=False).fit(X, Y, sample_weight=w)
    # Independent closed form: W = (Xᵀ D X + λI)⁻¹ Xᵀ D Y
    D = np.diag(w)
    W = np.linalg.solve(X.T @ D @ X + lam * np.eye(4), X.T @ D @ Y)
    close(ours.coef_.T, W, rtol=1e-6)
    loss = (
        beta / n * ((X[P] @ W - Y[P]) ** 2).sum() + (1 - beta) / m * ((X[E] @ W - Y[E]) ** 2).sum()
    )
    assert np.isfinite(loss)


def test_ridge_dataframe_records_bands(table):
    X, Y, _ = table
    frame = pd.DataFrame(X, columns=BANDS)
    model = Ridge(alpha=1.0).fit(frame, pd.DataFrame(Y, columns=["t0", "t1"]))
    assert model.bands_ == BANDS and model.output_bands_ == ["t0", "t1"]
    assert model.n_features_in_ == 4
    close(model.coef_, SkRidge(alpha=1.0).fit(X, Y).coef_)
    # columns are matched by name: another order gives the same prediction, another name fails
    np.testing.assert_array_equal(model.predict(frame[BANDS[::-1]]), model.predict(frame))
    with pytest.raises(BandError, match="B04"):
        model.predict(frame.rename(columns={"B04": "B05"}))


@pytest.mark.parametrize("chunked", [False, True])
def test_ridge_on_cube_equals_sklearn_rows(chunked):
    cube, target = make_cube()
    weight = xr.full_like(target, 1.0) + (target.x > 200)
    if chunked:
        cube, target, weight = (
            a.chunk({"time": 1, "y": 6, "x": 7}) for a in (cube, target, weight.chunk(y=4))
        )
    model = Ridge(alpha=0.5).fit(cube, target, sample_weight=weight)
    X, y, w = cube_rows(*(a.compute() for a in (cube, target, weight)))
    ref = SkRidge(alpha=0.5).fit(X, y, sample_weight=w)
    close(model.coef_, ref.coef_)
    close(model.intercept_, ref.intercept_)
    assert model.bands_ == BANDS and model.output_bands_ == ["prediction"]


def test_ridge_cube_multi_target_and_time_broadcast():
    cube, _ = make_cube()
    targets = cube.isel(time=0, drop=True).sel(band=["B01", "B02"]) * 2 + 1  # no time dim
    targets = targets.assign_coords(band=["t1", "t2"])
    model = Ridge(alpha=0.1).fit(cube.chunk({"y": 8}), targets)
    assert model.output_bands_ == ["t1", "t2"] and model.coef_.shape == (2, 4)
    X = cube.transpose("time", "y", "x", "band").values.reshape(-1, 4)
    Y = np.broadcast_to(targets.transpose("y", "x", "band").values, (2, 15, 19, 2)).reshape(-1, 2)
    ok = np.isfinite(X).all(1) & np.isfinite(Y).all(1)
    ref = SkRidge(alpha=0.1).fit(X[ok].astype(float), Y[ok].astype(float))
    close(model.coef_, ref.coef_)
    pred = model.predict(cube.chunk({"y": 8}))
    assert pred.band.values.tolist() == ["t1", "t2"]


class LargestResult(Callback):
    """Records the size of the largest result any task produced."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self._lock = threading.Lock()

    def _posttask(self, key, result, dsk, state, id):
        with self._lock:
            self.largest = max(self.largest, getattr(result, "nbytes", 0))


def test_ridge_reads_each_chunk_once_and_never_holds_x():
    rng = np.random.default_rng(3)
    source = rng.random((4000, 6))
    loads = Counter()

    def load(block_id=None):
        loads[block_id] += 1
        return source[block_id[0] * 500 : (block_id[0] + 1) * 500]

    X = dsa.map_blocks(load, chunks=((500,) * 8, (6,)), dtype=np.float64, meta=np.empty((0, 0)))
    y = dsa.from_array(source @ np.arange(1.0, 7.0) + 2.0, chunks=1000)
    with raise_if_dask_computes(max_computes=1) as counter:
        model = Ridge(alpha=1e-6).fit(X, y)
    assert counter.total_computes == 1
    assert len(loads) == 8 and set(loads.values()) == {1}  # every chunk read exactly once
    close(model.coef_, np.arange(1.0, 7.0), rtol=1e-5)
    close(model.intercept_, 2.0, rtol=1e-5)
    loads.clear()
    with LargestResult() as log:
        Ridge(alpha=1e-6).fit(X, y, sample_weight=dsa.ones(4000, chunks=700))
    assert set(loads.values()) == {1}
    assert log.largest <= 500 * 6 * 8  # no task ever held more than one chunk of X


def test_ridge_predict_is_lazy_and_eager_matches_chunked():
    cube, target = make_cube()
    model = Ridge(alpha=0.2).fit(cube, target)
    with raise_if_dask_computes():
        lazy = model.predict(cube.chunk({"y": 5, "x": 5}))
    eager = model.predict(cube)
    assert lazy.chunks is not None and eager.chunks is None
    np.testing.assert_allclose(lazy.values, eager.values, rtol=1e-6)
    X = cube.transpose("time", "y", "x", "band").values.reshape(-1, 4).astype(float)
    ref = (X @ model.coef_ + model.intercept_).reshape(2, 15, 19)
    np.testing.assert_allclose(eager.values[:, 0], ref, rtol=1e-5, atol=1e-5)


def test_ridge_errors():
    cube, target = make_cube()
    with pytest.raises(GridError):
        Ridge().fit(cube, target.isel(x=slice(1, None)))
    with pytest.raises(InputError, match="DataArray"):
        Ridge().fit(cube, target.values)
    with pytest.raises(InputError, match="alpha"):
        Ridge(alpha=-1).fit(np.ones((3, 2)), np.ones(3))
    with pytest.raises(InputError, match="no valid samples"):
        Ridge().fit(np.full((3, 2), np.nan), np.ones(3))
    with pytest.raises(ModelError, match="not fitted"):
        Ridge().predict(np.ones((2, 2)))
    with pytest.raises(InputError, match="rows"):
        Ridge().fit(np.ones((3, 2)), np.ones(4))


# ----------------------------------------------------------------------------------------------
# KernelRidge
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smooth():
    rng = np.random.default_rng(1)
    X = rng.uniform(-2, 2, size=(400, 3))
    y = np.sin(X[:, 0]) * np.cos(X[:, 1]) + 0.2 * X[:, 2] + rng.normal(scale=0.05, size=400)
    return X, y


@pytest.mark.parametrize("weighted", [False, True])
def test_kernel_ridge_exact_equals_sklearn(smooth, weighted):
    X, y = smooth
    w = np.random.default_rng(2).random(len(y)) if weighted else None
    sw = None if w is None else w[:200]
    ours = KernelRidge(alpha=1e-3, gamma=0.3, method="exact").fit(X[:200], y[:200], sw)
    ref = SkKernelRidge(alpha=1e-3, gamma=0.3, kernel="rbf").fit(X[:200], y[:200], sample_weight=sw)
    close(ours.dual_coef_[:, 0], ref.dual_coef_, rtol=1e-6)
    close(ours.predict(X[200:]), ref.predict(X[200:]), rtol=1e-6)


def test_kernel_ridge_nystroem_equals_sklearn_given_landmarks(smooth):
    X, y = smooth
    nys = Nystroem(gamma=0.3, n_components=60, random_state=4).fit(X)
    ref = make_pipeline(Nystroem(gamma=0.3, n_components=60, random_state=4), SkRidge(alpha=1e-2))
    ref.fit(X, y)
    ours = KernelRidge(alpha=1e-2, gamma=0.3, n_components=60).fit(X, y, landmarks=nys.components_)
    close(ours.predict(X), ref.predict(X), rtol=1e-6)
    # the default random draw picks the same landmarks as scikit-learn for the same seed
    seeded = KernelRidge(alpha=1e-2, gamma=0.3, n_components=60, random_state=4).fit(X, y)
    np.testing.assert_array_equal(seeded.landmarks_, nys.components_)


def test_kernel_ridge_rff_equals_sklearn(smooth):
    X, y = smooth
    ref = make_pipeline(RBFSampler(gamma=0.3, n_components=80, random_state=5), SkRidge(alpha=1e-2))
    ref.fit(X, y)
    ours = KernelRidge(alpha=1e-2, gamma=0.3, n_components=80, method="rff", random_state=5)
    close(ours.fit(X, y).predict(X), ref.predict(X), rtol=1e-6)


def test_kernel_ridge_sampling_factor_sets_landmarks(smooth):
    X, y = smooth
    model = KernelRidge(alpha=1e-3, gamma=0.01, sampling_factor=0.05, random_state=0).fit(X, y)
    assert model.landmarks_.shape == (20, 3)  # ceil(0.05 * 400)


@pytest.mark.parametrize("method", ["nystroem", "rff", "exact"])
def test_kernel_ridge_on_cube_eager_equals_chunked(method):
    cube, target = make_cube(shape=(1, 4, 12, 12))
    kw = {"alpha": 0.1, "gamma": 1.0, "n_components": 40, "method": method, "random_state": 0}
    X, y, _ = cube_rows(cube, target)
    landmarks = X[:40] if method == "nystroem" else None
    eager = KernelRidge(**kw).fit(cube, target, landmarks=landmarks)
    lazy = KernelRidge(**kw).fit(cube.chunk({"y": 5}), target.chunk({"x": 7}), landmarks=landmarks)
    rows = KernelRidge(**kw).fit(X, y, landmarks=landmarks)
    with raise_if_dask_computes():
        pred = lazy.predict(cube.chunk({"y": 6}))
    close(pred.values[:, 0], eager.predict(cube).values[:, 0], rtol=1e-5)
    close(eager.predict(X), rows.predict(X), rtol=1e-6)
    assert lazy.bands_ == BANDS


def test_kernel_ridge_errors(smooth):
    X, y = smooth
    with pytest.raises(InputError, match="method"):
        KernelRidge(method="svd").fit(X, y)
    with pytest.raises(InputError, match="gamma"):
        KernelRidge(gamma=0).fit(X, y)
    with pytest.raises(InputError, match="landmarks"):
        KernelRidge().fit(X, y, landmarks=np.ones((5, 2)))
    with pytest.raises(InputError, match="sampling_factor"):
        KernelRidge(sampling_factor=2.0).fit(X, y)


def test_params_roundtrip():
    model = KernelRidge(alpha=0.1, gamma=2.0, method="rff")
    assert model.get_params()["gamma"] == 2.0
    assert "method='rff'" in repr(model.set_params(n_components=7))
    with pytest.raises(InputError, match="unknown parameter"):
        model.set_params(kernel="poly")
    assert dask.is_dask_collection(dsa.ones(2)) and Ridge().get_params() == {
        "alpha": 1.0,
        "fit_intercept": True,
    }


@pytest.mark.parametrize(
    "model",
    [
        Ridge(alpha=0.3),
        KernelRidge(alpha=1e-2, gamma=0.5, method="exact"),
        KernelRidge(alpha=1e-2, gamma=0.5, n_components=30, random_state=0),
        KernelRidge(alpha=1e-2, gamma=0.5, n_components=30, method="rff", random_state=0),
    ],
    ids=["ridge", "exact", "nystroem", "rff"],
)
def test_save_load_predict_identical(tmp_path, model):
    pytest.importorskip("h5py")
    from xfusion.models.persist import load_model

    cube, target = make_cube(shape=(1, 4, 10, 10))
    model.fit(cube, target)
    path = model.save(tmp_path / "model")
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    assert loaded.bands_ == BANDS and loaded.output_bands_ == model.output_bands_
    lazy = cube.chunk({"y": 4})
    np.testing.assert_array_equal(loaded.predict(lazy).values, model.predict(lazy).values)
    X, _, _ = cube_rows(cube, target)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
