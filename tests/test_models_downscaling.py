"""models.downscaling: aggregation errors, held-out scores, the coarse ridge, the maps figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import Ridge as SkRidge

from tests.conftest import synthetic_cube
from xfusion.errors import InputError
from xfusion.grids import grid
from xfusion.models.downscaling import (
    aggregation_errors,
    aggregation_rmse,
    downscaling_scores,
    fit_coarse_ridge,
    plot_downscaled,
    regression_scores,
)

FINE = grid((0.0, 0.0, 20000.0, 20000.0), "EPSG:32615", 1000.0)  # 20 × 20 px
COARSE = grid((0.0, 0.0, 20000.0, 20000.0), "EPSG:32615", 5000.0)  # 4 × 4 px


def _cells(field, weights, f):
    """Weighted means of ``f × f`` cells by explicit loops (the reference)."""
    *lead, h, w = field.shape
    out = np.full((*lead, h // f, w // f), np.nan)
    for index in np.ndindex(*lead, h // f, w // f):
        *t, i, j = index
        cell = (*t, slice(i * f, (i + 1) * f), slice(j * f, (j + 1) * f))
        v, wt = field[cell], weights[cell]
        ok = np.isfinite(v) & (wt > 0)
        if ok.any():
            out[index] = np.sum(v[ok] * wt[ok]) / np.sum(wt[ok])
    return out


def test_aggregation_errors_and_rmse_against_loops():
    rng = np.random.default_rng(1)
    fine = rng.normal(size=(2, 10, 15))
    fine[0, :5, :5] = np.nan  # a cell without data: no error
    fine[1, 0, 0] = np.nan  # one pixel without data: left out of its cell
    coarse = rng.normal(size=(2, 2, 3))
    coarse[1, 1, 2] = np.nan  # no observation: no error
    weights = rng.random((2, 10, 15)) * (rng.random((2, 10, 15)) > 0.3)
    for wts in (None, weights):
        expected = _cells(fine, np.ones_like(fine) if wts is None else wts, 5) - coarse
        expected = expected[np.isfinite(expected)]
        np.testing.assert_allclose(aggregation_errors(fine, coarse, 5, wts), expected, rtol=1e-12)
    rmse = math.sqrt(np.mean((_cells(fine, np.ones_like(fine), 5) - coarse)[
        np.isfinite(_cells(fine, np.ones_like(fine), 5) - coarse)] ** 2))  # fmt: skip
    assert aggregation_rmse(fine, coarse, 5) == pytest.approx(rmse, rel=1e-12)
    with pytest.raises(InputError, match="is not the coarse field 2×3 times 4"):
        aggregation_errors(fine, coarse, 4)
    with pytest.raises(InputError, match="weights have shape"):
        aggregation_errors(fine, coarse, 5, weights[0])
    with pytest.raises(InputError, match="no coarse pixel with data"):
        aggregation_rmse(np.full((5, 5), np.nan), np.ones((1, 1)), 5)


def test_downscaling_scores_on_the_heldout_region():
    rng = np.random.default_rng(2)
    truth = rng.gamma(2.0, size=(3, 10, 10))
    coarse = truth.reshape(3, 2, 5, 2, 5).mean(axis=(2, 4))
    model = truth + rng.normal(scale=0.1, size=truth.shape)
    flat = np.kron(coarse, np.ones((5, 5)))
    held = np.zeros((10, 10), bool)
    held[:, 5:] = True
    scores = downscaling_scores({"model": model, "flat": flat}, coarse, held, 5, truth=truth)
    assert set(scores) == {"model", "flat"}
    assert scores["flat"]["aggregation_rmse"] == pytest.approx(0.0, abs=1e-12)
    observed = coarse[:, :, 1]
    errors = model.reshape(3, 2, 5, 2, 5).mean(axis=(2, 4))[:, :, 1] - observed
    m = scores["model"]
    assert m["aggregation_rmse"] == pytest.approx(math.sqrt(np.mean(errors**2)), rel=1e-10)
    spread = observed.max() - observed.min()
    assert m["aggregation_max_error_fraction"] == pytest.approx(np.abs(errors).max() / spread)
    reference = regression_scores(model[:, :, 5:], truth[:, :, 5:])
    assert {k: m[k] for k in ("rmse", "mae", "r2")} == {
        k: reference[k] for k in ("rmse", "mae", "r2")
    }
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean((model - truth)[:, :, 5:] ** 2)))
    # with footprints: errors are the weighted ones, and no truth, no truth scores
    weights = (rng.random(truth.shape) > 0.5).astype(float)
    weighted = downscaling_scores({"model": model}, coarse, held, 5, weights=weights)["model"]
    expected = _cells(model, weights, 5)[:, :, 1] - observed
    assert set(weighted) == {"aggregation_rmse", "aggregation_max_error_fraction"}
    assert weighted["aggregation_rmse"] == pytest.approx(math.sqrt(np.mean(expected**2)))


@pytest.mark.parametrize("footprints", [False, True])
def test_coarse_ridge_matches_scikit_learn_on_cell_means(footprints):
    rng = np.random.default_rng(4)
    vi = rng.random((3, 2, 20, 20)).astype("float32")
    weights = (rng.random((3, 1, 20, 20)) > 0.4).astype("float32")
    w = weights if footprints else np.ones_like(weights)
    means = np.stack([_cells(vi[:, b], w[:, 0], 5) for b in range(2)], axis=1)  # (t, b, 4, 4)
    sif = (0.8 * means[:, 0] - 0.3 * means[:, 1] + 0.05)[:, None].astype("float32")
    sif += rng.normal(scale=0.01, size=sif.shape).astype("float32")
    fine = synthetic_cube(vi, ["ndvi", "evi"], times=["2019-05-09", "2019-05-25", "2019-06-10"],
                          grid=FINE)  # fmt: skip
    coarse = synthetic_cube(sif, ["sif"], times=fine.time.values, grid=COARSE)
    footprint = synthetic_cube(weights, ["weight"], times=fine.time.values, grid=FINE)
    cells = np.ones((4, 4), bool)
    cells[:, 3] = False  # the eastern column is held out: not fitted on
    ridge = fit_coarse_ridge(fine, coarse, alpha=1e-3, cells=cells,
                             footprint=footprint if footprints else None)  # fmt: skip
    X = np.moveaxis(means, 1, -1)[:, cells].reshape(-1, 2)
    reference = SkRidge(alpha=1e-3).fit(X, sif[:, 0][:, cells].ravel())
    np.testing.assert_allclose(np.ravel(ridge.coef_), reference.coef_, rtol=1e-3)
    with pytest.raises(InputError, match="coarse has 2 bands"):
        fit_coarse_ridge(fine, fine.isel(x=slice(0, 4), y=slice(0, 4)))


def test_plot_downscaled_shares_one_scale_and_dashes_the_fine_maps(tmp_path):
    rng = np.random.default_rng(5)
    fine = synthetic_cube(rng.normal(size=(2, 1, 20, 20)), times=["2019-05-09", "2019-05-25"])
    coarse = fine.coarsen(y=5, x=5).mean()
    held = np.zeros((20, 20), bool)
    held[:, 14:] = True
    path = tmp_path / "maps.png"
    fig = plot_downscaled({"observed": coarse, "model": fine, "truth": fine * 2}, held, time=1,
                          units="SIF", title="peak", path=path)  # fmt: skip
    maps, colorbar = fig.axes[:3], fig.axes[3]
    assert [ax.get_title() for ax in maps] == ["observed", "model", "truth"]
    assert colorbar.get_ylabel() == "SIF" and path.stat().st_size > 0
    values = np.concatenate([coarse.values[1].ravel(), fine.values[1].ravel(),
                             2 * fine.values[1].ravel()])  # fmt: skip
    limits = np.percentile(values, [2, 98])
    for ax in maps:
        np.testing.assert_allclose(ax.images[0].get_clim(), limits)
    assert [len(ax.lines) for ax in maps] == [0, 1, 1]  # the coarse grid has no strip line
    assert maps[1].lines[0].get_xdata()[0] == 13.5
    np.testing.assert_array_equal(maps[2].images[0].get_array(), 2 * fine.values[1, 0])
