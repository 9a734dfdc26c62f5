"""Blockwise prediction: pixel models (scikit-learn, Ridge) and spatial models (halo, tiles)."""

from __future__ import annotations

import pickle
import sys

import dask
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.errors import BandError, InputError, ModelError
from xfusion.models.predict import predict
from xfusion.models.ridge import Ridge
from xfusion.testing import raise_if_dask_computes

BANDS = ["B02", "B03", "B04"]


def make_cube(shape=(2, 3, 18, 22), seed=0, nan_frac=0.05) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    data = rng.random(shape, dtype=np.float32)
    data[rng.random(shape) < nan_frac] = np.nan
    gbox = xf.grid((0, 0, shape[-1] * 10, shape[-2] * 10), "EPSG:32633", 10)
    return synthetic_cube(data, BANDS[: shape[-3]], grid=gbox)


def rows_of(cube: xr.DataArray) -> np.ndarray:
    lead = [d for d in cube.dims if d not in ("band", "y", "x")]
    rows = cube.transpose(*lead, "y", "x", "band").values.reshape(-1, cube.sizes["band"])
    return rows.astype(np.float64)


def as_cube_layout(values: np.ndarray, cube: xr.DataArray) -> np.ndarray:
    """(pixels, out) rows back to (…, out, y, x) in the cube's layout."""
    lead = [cube.sizes[d] for d in cube.dims if d not in ("band", "y", "x")]
    out = values.reshape(*lead, cube.sizes["y"], cube.sizes["x"], -1)
    return np.moveaxis(out, -1, -3)


def reference_pixels(cube, fn, n_out):
    rows = rows_of(cube)
    valid = np.isfinite(rows).all(axis=1)
    out = np.full((rows.shape[0], n_out), np.nan)
    out[valid] = np.asarray(fn(rows[valid])).reshape(valid.sum(), -1)
    return as_cube_layout(out, cube)


@pytest.fixture(scope="module")
def training():
    rng = np.random.default_rng(1)
    X = rng.random((300, 3))
    y_reg = X @ [1.0, -2.0, 0.5] + 0.3
    y_cls = (X[:, 0] + X[:, 1] > 1).astype(int) * 2 + (X[:, 2] > 0.5)
    return X, y_reg, y_cls


# ----------------------------------------------------------------------------------------------
# Pixel models
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_sklearn_regressor_equals_rowwise(training, chunked):
    X, y, _ = training
    model = LinearRegression().fit(X, y)
    cube = make_cube()
    arr = cube.chunk({"time": 1, "y": 7, "x": 9}) if chunked else cube
    with raise_if_dask_computes():
        out = predict(arr, model, bands=BANDS)  # fitted on unnamed columns: bands= names them
    assert (out.chunks is not None) == chunked
    assert out.dims == cube.dims and out.band.values.tolist() == ["prediction"]
    assert out.dtype == np.float32
    expected = reference_pixels(cube, model.predict, 1)
    np.testing.assert_allclose(out.values, expected, rtol=1e-6, atol=1e-6)
    assert np.array_equal(np.isnan(out.values[:, 0]), np.isnan(cube.values).any(axis=1))
    xr.testing.assert_identical(out.x, cube.x)
    assert out.rio.crs == cube.rio.crs


def test_classifier_labels_and_probabilities(training):
    X, _, y = training
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    model = xf.models.set_bands(model, BANDS)
    cube = make_cube(shape=(3, 12, 10))
    lazy = cube.chunk({"y": 5})
    with raise_if_dask_computes():
        labels = lazy.xf.predict(model)
        proba = predict(lazy, model, proba=True)
    assert labels.band.values.tolist() == ["class"]
    assert proba.band.values.tolist() == [f"proba_{c}" for c in model.classes_]
    np.testing.assert_array_equal(labels.values, reference_pixels(cube, model.predict, 1))
    np.testing.assert_allclose(
        proba.values, reference_pixels(cube, model.predict_proba, len(model.classes_)), atol=1e-6
    )
    np.testing.assert_array_equal(predict(cube, model).values, labels.values)


def test_kmeans_clusters_and_batches(training):
    X, _, _ = training
    model = KMeans(n_clusters=3, n_init=2, random_state=0).fit(X)
    cube = make_cube(shape=(3, 10, 10))
    out = predict(cube.chunk({"x": 4}), model, batch_size=7, bands=BANDS)
    assert out.band.values.tolist() == ["cluster"]
    np.testing.assert_array_equal(out.values, reference_pixels(cube, model.predict, 1))


def test_nan_rows_never_reach_the_model(training):
    X, y, _ = training

    class Strict(LinearRegression):
        def predict(self, rows):
            assert np.isfinite(rows).all(), "a NaN row reached the model"
            assert len(rows) > 0, "the model ran on an empty/dummy block"
            return super().predict(rows)

    model = Strict().fit(X, y)
    cube = make_cube(nan_frac=0.3)
    cube[:, :, :6, :] = np.nan  # whole blocks without data
    out = predict(cube.chunk({"y": 6, "x": 11}), model, bands=BANDS).compute()
    assert np.isnan(out.values[:, :, :6]).all()


def test_model_is_one_key_of_the_graph(training):
    X, _, y = training
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)
    out = predict(make_cube(shape=(3, 16, 16)).chunk({"y": 4, "x": 4}), model, bands=BANDS)
    graph = dict(out.data.__dask_graph__())
    model_size = len(pickle.dumps(model))
    holders = [k for k, v in graph.items() if getattr(v, "value", v) is model or v is model]
    assert len(holders) == 1
    task_sizes = [len(pickle.dumps(v)) for k, v in graph.items() if k not in holders]
    assert max(task_sizes) < model_size / 5


def test_wrong_bands_raise_band_error(training):
    X, y, _ = training
    frame = pd.DataFrame(X, columns=BANDS)
    model = LinearRegression().fit(frame, y)
    cube = make_cube(shape=(3, 6, 6))
    renamed = cube.assign_coords(band=["B05", "B02", "B04"])
    with pytest.raises(BandError, match=r"\['B05', 'B02', 'B04'\].*\['B02', 'B03', 'B04'\]"):
        predict(renamed, model)
    ridge = Ridge().fit(cube.isel(band=[0, 1]), cube.isel(band=2, drop=True))
    with pytest.raises(BandError, match=r"select them with bands=\['B02', 'B03'\]"):
        predict(cube, ridge)
    unnamed = LinearRegression().fit(X[:, :2], y)
    with pytest.raises(BandError, match=r"unnamed arrays \(2 inputs\)"):
        predict(cube, unnamed)
    with pytest.raises(BandError, match=r"names 3 bands .* but the model has 2 inputs"):
        predict(cube, unnamed, bands=BANDS)


def test_bad_inputs():
    cube = make_cube(shape=(3, 6, 6))
    model = LinearRegression().fit(np.random.default_rng(0).random((9, 3)), np.arange(9))
    with pytest.raises(InputError, match="lacks"):
        predict(cube.rename(x="lon"), model)
    with pytest.raises(ModelError, match="predict_proba"):
        predict(cube, model, proba=True, bands=BANDS)
    with pytest.raises(ModelError, match="neither predict"):
        predict(cube, object())
    strings = RandomForestClassifier(n_estimators=2).fit(
        np.random.default_rng(0).random((9, 3)), ["a", "b", "c"] * 3
    )
    with pytest.raises(ModelError, match="not numeric"):
        predict(cube, strings, bands=BANDS)


def test_ridge_predicts_through_predict():
    cube = make_cube(shape=(2, 3, 10, 12), nan_frac=0.1)
    target = cube.sum("band") * 2 - 1
    ridge = Ridge(alpha=1e-3).fit(cube.chunk({"y": 4}), target)
    with raise_if_dask_computes():
        lazy = ridge.predict(cube.chunk({"y": 4}))
    expected = reference_pixels(cube, lambda r: r @ ridge.coef_ + ridge.intercept_, 1)
    np.testing.assert_allclose(lazy.values, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Spatial models: a fixed 5×5 convolution whose receptive field (radius 2) is known exactly
# ----------------------------------------------------------------------------------------------

_traces = {"n": 0}


@jax.jit
def _conv(kernel, bias, x):
    _traces["n"] += 1  # runs once per trace: once per input shape
    x = jnp.where(jnp.isnan(x), 0.0, x)
    y = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    return y + bias[None, :, None, None]


class ConvModel:
    """A spatial model: 5×5 convolution of the bands to two outputs, radius-2 receptive field."""

    tile_multiple_ = 1
    default_halo_ = 2

    def __init__(self, n_bands=3, seed=0):
        rng = np.random.default_rng(seed)
        self.kernel = rng.normal(size=(2, n_bands, 5, 5)).astype(np.float32)
        self.bias = np.array([0.5, -1.0], np.float32)
        self.bands_ = BANDS[:n_bands]
        self.output_bands_ = ["conv_a", "conv_b"]

    def inference_state(self):
        return {"kernel_shape": list(self.kernel.shape)}, {"kernel": self.kernel, "bias": self.bias}

    @staticmethod
    def apply_tiles(config, params, x):
        return np.asarray(_conv(params["kernel"], params["bias"], jnp.asarray(x)))

    @staticmethod
    def compile_count():
        return _traces["n"]


def conv_reference(cube: xr.DataArray, model: ConvModel) -> np.ndarray:
    """Independent numpy reference: reflect-pad by 2, correlate, NaN where any band is NaN."""
    data = np.nan_to_num(cube.values.astype(np.float64))
    pad = [(0, 0)] * (data.ndim - 2) + [(2, 2), (2, 2)]
    padded = np.pad(data, pad, mode="reflect")
    ny, nx = data.shape[-2:]
    out = np.zeros((*data.shape[:-3], 2, ny, nx))
    for o in range(2):
        acc = np.zeros((*data.shape[:-3], ny, nx))
        for b in range(data.shape[-3]):
            for dy in range(5):
                for dx in range(5):
                    acc += model.kernel[o, b, dy, dx] * padded[..., b, dy : dy + ny, dx : dx + nx]
        out[..., o, :, :] = acc + model.bias[o]
    nodata = np.isnan(cube.values).any(axis=-3)
    return np.where(np.expand_dims(nodata, -3), np.nan, out)


def test_spatial_eager_equals_numpy_reference():
    model = ConvModel()
    cube = make_cube(shape=(2, 3, 13, 17))
    out = predict(cube, model)
    assert out.band.values.tolist() == ["conv_a", "conv_b"]
    assert out.chunks is None
    np.testing.assert_allclose(out.values, conv_reference(cube, model), rtol=1e-5, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(
    cy=st.integers(3, 13),
    cx=st.integers(3, 17),
    halo=st.integers(2, 5),
    tile=st.sampled_from([None, 3, 4, 8]),
    blend=st.sampled_from(["trim", "cosine"]),
)
def test_spatial_blockwise_is_seamless(cy, cx, halo, tile, blend):
    if blend == "cosine":  # the blend ramps use the inner half of the halo
        halo = max(halo, 4)
    model = ConvModel()
    cube = make_cube(shape=(2, 3, 13, 17), seed=3)
    with raise_if_dask_computes():
        lazy = predict(
            cube.chunk({"time": 1, "y": cy, "x": cx}), model, halo=halo, tile=tile, blend=blend
        )
    assert lazy.chunks is not None
    whole = predict(cube, model, halo=halo)
    np.testing.assert_allclose(lazy.values, whole.values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lazy.values, conv_reference(cube, model), rtol=1e-5, atol=1e-5)


def test_spatial_compiles_once_per_block_shape():
    model = ConvModel()
    cube = make_cube(shape=(3, 3, 29, 23), seed=4)  # uneven edges in time, y and x
    lazy = predict(cube.chunk({"time": 2, "y": 11, "x": 7}), model, halo=3, tile=7, batch_size=5)
    before = model.compile_count()
    lazy.compute()
    assert model.compile_count() - before <= 1
    again = predict(cube.chunk({"time": 1, "y": 14, "x": 14}), model, halo=3, tile=7, batch_size=5)
    again.compute()
    assert model.compile_count() - before <= 1  # same tile and batch shape: no new compile


def test_spatial_config_and_params_are_single_keys():
    from dask.core import get_dependencies

    model = ConvModel()
    out = predict(make_cube(shape=(3, 20, 20)).chunk({"y": 5, "x": 5}), model, halo=2)
    graph = dict(out.data.__dask_graph__())
    shared = [k for k in graph if not isinstance(k, tuple)]
    assert len(shared) == 2  # config and params, each stored once
    users = {k: 0 for k in shared}
    for key in graph:
        for dep in get_dependencies(graph, key):
            if dep in users:
                users[dep] += 1
    assert list(users.values()) == [16, 16]  # every one of the 4 x 4 blocks refers to both


def test_spatial_rejects_bad_arguments():
    model = ConvModel()
    cube = make_cube(shape=(3, 8, 8))
    with pytest.raises(InputError, match="halo"):
        predict(cube, model, halo=-1)
    with pytest.raises(InputError, match="blend"):
        predict(cube, model, blend="gauss")
    with pytest.raises(InputError, match="proba"):
        predict(cube, model, proba=True)
    with pytest.raises(BandError, match=r"missing \['B04'\]"):
        predict(cube.assign_coords(band=["B02", "B03", "B09"]), model)
    # the same bands in another order are fed in the model's order
    xr.testing.assert_identical(predict(cube.isel(band=[1, 0, 2]), model), predict(cube, model))


# ----------------------------------------------------------------------------------------------
# Distributed: process workers give the local answer
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow  # process workers import the stack: tens of seconds on 2 busy cores
def test_local_cluster_processes_equal_local(training):
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    X, _, y = training
    rf = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    cube = make_cube(shape=(3, 16, 16), seed=5)
    ridge = Ridge(alpha=0.1).fit(cube, cube.isel(band=0, drop=True) * 2)
    conv = ConvModel()
    lazy = cube.chunk({"y": 8, "x": 8})
    jobs = {
        "rf": predict(lazy, rf, proba=True, bands=BANDS),
        "ridge": predict(lazy, ridge),
        "conv": predict(lazy, conv, halo=2),
    }
    local = {k: v.compute(scheduler="sync") for k, v in jobs.items()}
    # The test module is not importable in the workers: ship it by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with (
            distributed.LocalCluster(
                n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            remote = dict(zip(jobs, dask.compute(*jobs.values(), scheduler=client), strict=True))
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    for key in jobs:
        np.testing.assert_allclose(remote[key].values, local[key].values, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# A small real U-Net (depth 2): seamless when the halo covers its receptive field
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_unet():
    estimators = pytest.importorskip("xfusion.models.estimators")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 2, 16, 16)).astype(np.float32)
    model = estimators.UNetRegressor(widths=(4, 8), center=8, epochs=1, progress=False)
    return model.fit(X, X[:, :1] * 2 - X[:, 1:], bands=["B04", "B08"])


def test_unet_blockwise_is_seamless_and_compiles_once(tiny_unet):
    from xfusion.models import unet

    assert tiny_unet.default_halo_ >= unet.receptive_field_radius(2)
    rng = np.random.default_rng(1)
    data = rng.normal(size=(2, 44, 52)).astype(np.float32)
    data[:, 5, 7] = np.nan
    cube = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": ["B04", "B08"]})
    lazy = predict(cube.chunk({"y": 20, "x": 24}), tiny_unet, tile=24)
    before = unet.compile_count()
    blockwise = lazy.values
    assert unet.compile_count() - before <= 1  # one block/tile shape, edge blocks padded
    whole = predict(cube, tiny_unet, tile=24).values
    np.testing.assert_allclose(blockwise, whole, rtol=1e-5, atol=1e-5)
    assert np.isnan(blockwise[0, 5, 7])
    assert np.isfinite(np.delete(blockwise.ravel(), 5 * 52 + 7)).all()
    # the whole array through the network in one piece (no tiles, reflect-padded by the halo)
    padded = np.pad(data, ((0, 0), (32, 32), (32, 32)), mode="reflect")
    config, params = tiny_unet.inference_state()
    direct = unet.apply_tiles(config, params, padded[None])[0, :, 32:-32, 32:-32]
    ok = ~np.isnan(data).any(0)
    np.testing.assert_allclose(blockwise[:, ok], direct[:, ok], rtol=1e-4, atol=1e-4)
