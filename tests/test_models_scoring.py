"""Scores of several maps on the same held-out window, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from xfusion.errors import InputError
from xfusion.grids import assign_grid, grid
from xfusion.models.scoring import flat_scores, plot_windows, score_windows
from xfusion.testing import raise_if_dask_computes


def _cube(values, resolution):
    gbox = grid((0, 0, 8, 8), "EPSG:32630", resolution)
    return assign_grid(xr.DataArray(values[None], dims=("band", "y", "x")), gbox)


def _numpy(p, t):
    ok = np.isfinite(p) & np.isfinite(t)
    err = p[ok] - t[ok]
    r2 = 1 - np.sum(err**2) / np.sum((t[ok] - t[ok].mean()) ** 2)
    return {"n": ok.sum(), "rmse": np.sqrt(np.mean(err**2)), "mae": np.abs(err).mean(), "r2": r2}


def test_fine_and_coarse_pairs_on_the_window_against_numpy():
    rng = np.random.default_rng(0)
    truth, pred = rng.random((8, 8)), rng.random((8, 8))
    pred[0, 6] = np.nan  # a pixel without a prediction is left out
    coarse_t, coarse_p = rng.random((2, 2)), rng.random((2, 2))
    pairs = {
        "fine": (_cube(pred, 1.0).chunk(4), _cube(truth, 1.0).chunk(4)),
        "coarse": (_cube(coarse_p, 4.0), _cube(coarse_t, 4.0)),
    }
    box = (4.0, 0.0, 8.0, 8.0)  # the east half: columns 4.. and the second coarse column
    with raise_if_dask_computes(max_computes=1):
        scores = score_windows(pairs, box)
    for name, (p, t) in {
        "fine": (pred[:, 4:], truth[:, 4:]),
        "coarse": (coarse_p[:, 1:], coarse_t[:, 1:]),
    }.items():
        expected = _numpy(p, t)
        assert scores[name]["n"] == expected["n"]
        for key in ("rmse", "mae", "r2"):
            assert scores[name][key] == pytest.approx(expected[key], rel=1e-12), (name, key)
    assert scores["fine"]["n"] == 31
    everywhere = score_windows({"fine": pairs["fine"]})["fine"]
    assert everywhere["n"] == 63 and everywhere["rmse"] == pytest.approx(
        _numpy(pred, truth)["rmse"]
    )


def test_flat_scores_and_bad_pairs():
    scores = {"n": 3, "rmse": 0.5, "mae": 0.25, "r2": 0.75}
    assert flat_scores(scores, "x_") == {
        "x_rmse": 0.5, "x_mae": 0.25, "x_r2": 0.75, "x_n_pixels": 3,
    }  # fmt: skip
    plain = xr.DataArray(np.zeros((2, 2)), dims=("y", "x"))
    with pytest.raises(InputError, match="pair 'model' must be"):
        score_windows({"model": (plain, plain)})


def test_plot_windows_writes_one_figure_per_map(tmp_path):
    import matplotlib.image

    rng = np.random.default_rng(1)
    truth = _cube(rng.random((8, 8)), 1.0)
    maps = {"model": ("Model", truth + 0.5), "other": ("Other", truth * 2)}
    paths = plot_windows(truth, maps, (4.0, 0.0, 8.0, 8.0), tmp_path, reference_title="truth")
    assert sorted(paths) == ["model", "other"]
    for stem, path in paths.items():
        assert path == tmp_path / f"{stem}.png"
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 50 and image.std() > 0  # a drawn figure
