"""Determinism (same seed, same weights) and chunking invariance under random ragged chunkings."""

from __future__ import annotations

import itertools
import warnings

import jax
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.models import KernelRidge, Ridge, UNetRegressor, UNetSegmenter
from xfusion.models.predict import predict
from xfusion.preprocess.composite import COMPOSITE_METHODS, composite
from xfusion.preprocess.resample import resample
from xfusion.testing import raise_if_dask_computes

# the architecture and batch shape of the other model tests: the jitted steps are shared
SMALL = {"widths": (4, 8), "center": 8, "batch_size": 8, "progress": False, "augment": False}
SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def ragged(draw, n: int, max_pieces: int = 5) -> tuple[int, ...]:
    """A chunking of ``n`` (a tuple of positive sizes summing to ``n``), often uneven."""
    cuts = draw(st.sets(st.integers(1, n - 1), max_size=max_pieces - 1)) if n > 1 else set()
    edges = [0, *sorted(cuts), n]
    return tuple(b - a for a, b in itertools.pairwise(edges))


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(u, v) for u, v in zip(la, lb, strict=True))


# ----------------------------------------------------------------------------------------------
# Same seed, same weights (CPU). UNetRegressor: tests/test_train.py.
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 2, 16, 16)).astype(np.float32)


def test_segmenter_same_seed_identical_weights(images):
    labels = (images[:, :1] + 0.3 * images[:, 1:] > 0).astype(np.float32)
    a, b, c = (UNetSegmenter(**SMALL, epochs=1, seed=s).fit(images, labels) for s in (3, 3, 4))
    assert leaves_equal(a.params_, b.params_)
    assert not leaves_equal(a.params_, c.params_)
    np.testing.assert_array_equal(a.predict_proba(images), b.predict_proba(images))


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    return X, np.sin(X[:, 0]) + X[:, 1] * X[:, 2]


@pytest.mark.parametrize("method", ["nystroem", "rff"])
def test_kernel_ridge_random_features_same_seed_identical_weights(table, method):
    X, y = table
    kw = {"alpha": 1e-2, "gamma": 0.5, "n_components": 40, "method": method}
    a, b, c = (KernelRidge(**kw, random_state=s).fit(X, y) for s in (7, 7, 8))
    names = ("landmarks_", "coef_") if method == "nystroem" else ("random_weights_", "coef_")
    for name in names:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert not np.array_equal(getattr(a, name), getattr(c, name))
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


def test_ridge_refit_identical_weights_and_independent_of_fit_chunking(table):
    X, y = table
    a, b = Ridge(alpha=0.5).fit(X, y), Ridge(alpha=0.5).fit(X, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    np.testing.assert_array_equal(a.intercept_, b.intercept_)
    # one data pass over chunks: the weights agree with the in-memory fit to rounding
    import dask.array as dsa

    c = Ridge(alpha=0.5).fit(dsa.from_array(X, chunks=(37, 3)), dsa.from_array(y, chunks=37))
    np.testing.assert_allclose(c.coef_, a.coef_, rtol=1e-10)


# ----------------------------------------------------------------------------------------------
# predict: pixel models exactly, a U-Net with halo to 1e-5
# ----------------------------------------------------------------------------------------------

PIX_SHAPE = (3, 3, 19, 23)


def _pixel_cube(seed=0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    data = rng.random(PIX_SHAPE, dtype=np.float32)
    data[rng.random(PIX_SHAPE) < 0.05] = np.nan
    return synthetic_cube(
        data, ["B02", "B03", "B04"], grid=xf.grid((0, 0, 230, 190), "EPSG:32633", 10)
    )


@pytest.fixture(scope="module")
def pixel_models():
    rng = np.random.default_rng(2)
    X = rng.random((200, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.1 * np.sin(9 * X[:, 0])
    table = pd.DataFrame(X, columns=["B02", "B03", "B04"])
    bands = list(table.columns)  # the models fitted on bare arrays are told their bands
    return {
        "ridge": Ridge(alpha=0.1).fit(X, y).set_bands(bands),
        "kernel_ridge": KernelRidge(gamma=1.0, n_components=30, random_state=0)
        .fit(X, y)
        .set_bands(bands),
        "linear": LinearRegression().fit(table, y),
        "forest": xf.models.set_bands(
            RandomForestRegressor(n_estimators=3, max_depth=4, random_state=0).fit(X, y), bands
        ),
    }


@SETTINGS
@given(
    data=st.data(),
    name=st.sampled_from(["ridge", "kernel_ridge", "linear", "forest"]),
    batch_size=st.sampled_from([None, 7, 64]),
)
def test_pixel_predict_is_invariant_to_chunking(pixel_models, data, name, batch_size):
    cube = _pixel_cube()
    chunks = {d: data.draw(ragged(n), label=d) for d, n in cube.sizes.items()}
    model = pixel_models[name]
    whole = predict(cube, model, batch_size=batch_size).values
    with raise_if_dask_computes():
        lazy = predict(cube.chunk(chunks), model, batch_size=batch_size)
    assert lazy.chunks[-2:] == (chunks["y"], chunks["x"])
    np.testing.assert_array_equal(lazy.values, whole)
    assert np.isnan(whole).any() and np.isfinite(whole).mean() > 0.8


@pytest.fixture(scope="module")
def unet(images):
    target = images[:, :1] * 2 - images[:, 1:]
    return UNetRegressor(**SMALL, epochs=1).fit(images, target, bands=["B04", "B08"])


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_unet_predict_with_halo_is_invariant_to_chunking(unet, data):
    from xfusion.models.unet import receptive_field_radius

    halo = 24  # covers the receptive field: blocks see all the context the network uses
    assert receptive_field_radius(2) <= halo
    rng = np.random.default_rng(4)
    values = rng.normal(size=(2, 2, 29, 35)).astype(np.float32)
    values[0, 1, 5, 7] = np.nan
    cube = synthetic_cube(values, ["B04", "B08"])
    chunks = {
        "time": data.draw(ragged(2), label="time"),
        "band": data.draw(ragged(2), label="band"),
        "y": data.draw(ragged(29, 4), label="y"),
        "x": data.draw(ragged(35, 4), label="x"),
    }
    # fixed tile and batch: every chunking runs the network on one shape (one compile)
    kw = {"halo": halo, "tile": 16, "batch_size": 4}
    whole = predict(cube, unet, **kw).values
    with raise_if_dask_computes():
        lazy = predict(cube.chunk(chunks), unet, **kw)
    np.testing.assert_allclose(lazy.values, whole, rtol=1e-5, atol=1e-5)
    assert np.isnan(whole[0, 0, 5, 7]) and np.isfinite(whole).sum() == whole.size - 1


# ----------------------------------------------------------------------------------------------
# composite: every method, windows and periods, exactly the single-chunk result
# ----------------------------------------------------------------------------------------------


def _series(n: int, seed: int) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    data = rng.random((n, 2, 6, 7)).astype(np.float32)
    data[rng.random(data.shape) < 0.5] = np.nan
    data[:, :, 0, 0] = np.nan  # never observed
    return synthetic_cube(
        data, ["B04", "B08"], times=pd.date_range("2020-03-05", periods=n, freq="5D")
    )


@SETTINGS
@given(
    data=st.data(),
    n=st.integers(3, 14),
    how=st.sampled_from(COMPOSITE_METHODS),
    window=st.sampled_from([{}, {"freq": "MS"}, {"freq": "12D"}, {"start": "2020-03-12"}]),
)
def test_composite_is_invariant_to_chunking(data, n, how, window):
    cube = _series(n, seed=n)
    chunks = {d: data.draw(ragged(size), label=d) for d, size in cube.sizes.items()}
    single = composite(cube.chunk(-1), how, **window).compute()
    with raise_if_dask_computes():
        lazy = composite(cube.chunk(chunks), how, **window)
    xr.testing.assert_identical(lazy.compute(), single)
    xr.testing.assert_identical(composite(cube, how, **window), single)


def test_composite_mean_does_not_depend_on_the_block_shape():
    # one-pixel-wide blocks make time the contiguous axis: numpy's pairwise summation would
    # round differently from the whole-array reduction
    cube = _series(14, seed=14)
    single = composite(cube.chunk(-1), "mean").compute()
    thin = composite(cube.chunk({"band": 1, "y": (1, 1, 1, 3), "x": (1, 6)}), "mean").compute()
    xr.testing.assert_identical(thin, single)
    with warnings.catch_warnings():  # the never-observed pixel: "Mean of empty slice"
        warnings.simplefilter("ignore", RuntimeWarning)
        reference = np.nanmean(cube.values.astype(np.float64), axis=0)
    np.testing.assert_allclose(single.values, reference, rtol=1e-7)


# ----------------------------------------------------------------------------------------------
# resample: exact within a CRS, GDAL's documented tolerance across CRSs
# ----------------------------------------------------------------------------------------------

SRC = xf.grid((500000, 4000000, 500000 + 10 * 41, 4000000 + 10 * 37), 32633, 10)
TARGETS = {
    "aligned_20m": xf.grid((500000, 4000000, 500400, 4000360), 32633, 20),
    "aligned_30m_edges": xf.grid((499980, 3999990, 500430, 4000380), 32633, 30),
    "unaligned_25m": xf.grid((500003, 4000007, 500400, 4000350), 32633, 25),
    "finer_4m": xf.grid((500100, 4000100, 500200, 4000200), 32633, 4),
    "geographic": xf.grid((15.0, 36.1454, 15.0040, 36.1484), 4326, 0.0003),
}


def _smooth_cube() -> xr.DataArray:
    ny, nx = SRC.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    data = np.empty((2, 1, ny, nx), np.float32)
    data[0, 0] = 50 + 30 * np.sin(yy / 7.0) * np.cos(xx / 5.0)
    data[1, 0] = data[0, 0][::-1] * 0.5
    data[np.random.default_rng(0).random(data.shape) < 0.1] = np.nan
    return synthetic_cube(data, ["value"], grid=SRC)


# rasterio reports this spuriously when several Dask threads warp at once (see resample.py)
@pytest.mark.filterwarnings("ignore:Dataset has no geotransform")
@SETTINGS
@given(
    data=st.data(),
    target=st.sampled_from(list(TARGETS)),
    method=st.sampled_from(["average", "nearest", "bilinear", "mode", "max"]),
    out_chunk=st.sampled_from([None, 4, 9]),
)
def test_resample_is_invariant_to_chunking(data, target, method, out_chunk):
    cube = _smooth_cube()
    chunks = {
        "time": data.draw(ragged(2), label="time"),
        "y": data.draw(ragged(37), label="y"),
        "x": data.draw(ragged(41), label="x"),
    }
    dst = TARGETS[target]
    single = resample(cube.chunk({"y": -1, "x": -1}), dst, method, chunks=out_chunk).values
    with raise_if_dask_computes():
        lazy = resample(cube.chunk(chunks), dst, method, chunks=out_chunk)
    got = lazy.values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(single))
    assert np.isfinite(single).any()
    if target == "geographic" and method in ("average", "bilinear"):
        # GDAL's approximate transformer differs per chunk across CRSs (resample's Notes):
        # below 1e-3 of the data range (60) on this smooth field
        np.testing.assert_allclose(got, single, atol=1e-3 * 60)
    else:
        np.testing.assert_array_equal(got, single)
