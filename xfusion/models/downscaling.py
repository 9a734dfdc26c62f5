"""Judging a downscaled field: against the fine truth, and against the coarse observations.

A downscaled field is right in two ways. Where a fine truth exists (a synthetic scene, an
airborne campaign), its RMSE, MAE and R² against it (:func:`regression_scores`). Everywhere,
the physical constraint: averaged back over each coarse pixel (with the observation's
footprint weights, for coarse values that cover only part of their cell), it should give the
coarse observation again (:func:`aggregation_rmse`, :func:`aggregation_errors`).
:func:`downscaling_scores` reports both for a model and its baselines on a held-out region.
:func:`fit_coarse_ridge` is the pixel baseline of coarse supervision: a ridge fitted on the fine
bands averaged to the coarse grid against the coarse field, then applied at the fine
resolution. The scores are eager (numpy arrays in memory); the ridge computes its fit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from xfusion.errors import InputError
from xfusion.models.baselines import score_predictions
from xfusion.preprocess.resample import resample

__all__ = [
    "aggregation_errors",
    "aggregation_rmse",
    "downscaling_scores",
    "fit_coarse_ridge",
    "plot_downscaled",
    "regression_scores",
]


def _check_factor(fine: np.ndarray, coarse: np.ndarray, factor: int) -> None:
    h, w = fine.shape[-2:]
    if (h, w) != (coarse.shape[-2] * factor, coarse.shape[-1] * factor):
        raise InputError(
            f"fine field {h}×{w} is not the coarse field {coarse.shape[-2]}×{coarse.shape[-1]} "
            f"times {factor}"
        )


def aggregation_rmse(fine: np.ndarray, coarse: np.ndarray, factor: int) -> float:
    """RMSE between a fine field averaged over ``factor × factor`` blocks and a coarse field.

    ``fine`` is ``(..., Y * factor, X * factor)`` and ``coarse`` ``(..., Y, X)``; blocks are
    averaged over their finite pixels (in float64), and blocks or coarse pixels without data are
    skipped.

    Examples
    --------
    >>> import numpy as np
    >>> fine = np.arange(16.0).reshape(4, 4)
    >>> aggregation_rmse(fine, np.array([[2.5, 4.5], [10.5, 13.5]]), 2)
    0.5
    """
    f = np.asarray(fine, dtype=np.float64)
    c = np.asarray(coarse, dtype=np.float64)
    _check_factor(f, c, factor)
    *lead, h, w = f.shape
    blocks = f.reshape(*lead, h // factor, factor, w // factor, factor)
    count = np.isfinite(blocks).sum(axis=(-3, -1))
    total = np.nansum(blocks, axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
    diff = (mean - c)[np.isfinite(mean - c)]
    if diff.size == 0:
        raise InputError("no coarse pixel with data in both fields")
    return float(np.sqrt(np.mean(diff**2)))


def aggregation_errors(
    fine: np.ndarray, coarse: np.ndarray, factor: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """Weighted block means of ``fine`` minus the coarse observations, where both exist.

    Parameters
    ----------
    fine : ndarray
        ``(..., Y * factor, X * factor)`` field (NaN: no value, left out of its block).
    coarse : ndarray
        ``(..., Y, X)`` observations (NaN: none).
    factor : int
        Fine pixels per coarse pixel along each side.
    weights : ndarray, optional
        Weights of each observation on the fine grid (its footprint), the shape of ``fine``;
        default uniform (in ``fine``'s dtype).

    Returns
    -------
    ndarray
        One error per coarse pixel with an observation and some weight, flattened.

    Examples
    --------
    >>> import numpy as np
    >>> fine = np.array([[1.0, 3.0], [5.0, 7.0]])
    >>> aggregation_errors(fine, np.array([[4.0]]), 2).tolist()
    [0.0]
    >>> aggregation_errors(fine, np.array([[4.0]]), 2, weights=np.array([[1, 0], [0, 0]])).tolist()
    [-3.0]
    """
    fine, coarse = np.asarray(fine), np.asarray(coarse)
    weights = np.ones_like(fine) if weights is None else np.asarray(weights)
    _check_factor(fine, coarse, factor)
    if weights.shape != fine.shape:
        raise InputError(f"weights have shape {weights.shape}; expected the field's {fine.shape}")
    *lead, h, w = fine.shape
    shape = (*lead, h // factor, factor, w // factor, factor)
    ok = np.isfinite(fine)
    wts = np.where(ok, weights, 0.0).reshape(shape)
    total = wts.sum(axis=(-3, -1))
    num = (wts * np.where(ok, fine, 0.0).reshape(shape)).sum(axis=(-3, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(total > 0, num / np.where(total > 0, total, 1.0), np.nan) - coarse
    return diff[np.isfinite(diff)]


def regression_scores(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Return RMSE, MAE and R² of ``prediction`` against ``truth`` over common finite pixels.

    :func:`xfusion.models.baselines.score_predictions` for a regression (eager).

    Examples
    --------
    >>> import numpy as np
    >>> regression_scores(np.array([1.0, 2.0, 4.0]), np.array([1.0, 2.0, 3.0]))
    {'n': 3, 'rmse': 0.577..., 'mae': 0.333..., 'r2': 0.5}
    """
    return score_predictions(prediction, truth, task="regression")


def downscaling_scores(
    predictions: Mapping[str, np.ndarray],
    coarse: np.ndarray,
    heldout: np.ndarray,
    factor: int,
    *,
    truth: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Score downscaled fields on a held-out region, against the coarse observations and the truth.

    Parameters
    ----------
    predictions : mapping of str to ndarray
        Fine fields ``(time, y, x)`` by name (a model and its baselines).
    coarse : ndarray
        The coarse observations ``(time, y / factor, x / factor)``.
    heldout : ndarray of bool
        ``(y, x)`` map of the held-out region on the fine grid, in whole coarse pixels.
    factor : int
        Fine pixels per coarse pixel along each side.
    truth : ndarray, optional
        The fine truth ``(time, y, x)``.
    weights : ndarray, optional
        Footprint weights of the observations on the fine grid ``(time, y, x)``.

    Returns
    -------
    dict
        Per name: ``aggregation_rmse`` (with ``weights``, the RMSE of
        :func:`aggregation_errors`; without, :func:`aggregation_rmse`),
        ``aggregation_max_error_fraction`` (the largest aggregation error over the range of the
        held-out observations) and, with a truth, ``rmse``, ``mae`` and ``r2`` over the held-out
        pixels.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.arange(16.0).reshape(1, 4, 4)
    >>> coarse = truth.reshape(1, 2, 2, 2, 2).mean(axis=(2, 4))
    >>> held = np.zeros((4, 4), bool); held[:, 2:] = True
    >>> scores = downscaling_scores({"flat": np.repeat(np.repeat(coarse, 2, 1), 2, 2)},
    ...                             coarse, held, 2, truth=truth)
    >>> scores["flat"]["aggregation_rmse"], round(scores["flat"]["rmse"], 3)
    (0.0, 2.062)
    """
    heldout = np.asarray(heldout, bool)
    observed = np.where(heldout[::factor, ::factor], coarse, np.nan)
    finite = observed[np.isfinite(observed)]
    spread = float(finite.max() - finite.min()) if finite.size else np.nan
    out: dict[str, dict[str, float]] = {}
    for name, field in predictions.items():
        errors = aggregation_errors(field, observed, factor, weights)
        if weights is None:
            scores = {"aggregation_rmse": aggregation_rmse(field, observed, factor)}
        else:
            scores = {"aggregation_rmse": float(np.sqrt(np.mean(errors**2)))}
        scores["aggregation_max_error_fraction"] = float(np.max(np.abs(errors)) / spread)
        if truth is not None:
            fit = regression_scores(field[:, heldout], truth[:, heldout])
            scores.update({key: fit[key] for key in ("rmse", "mae", "r2")})
        out[name] = scores
    return out


def fit_coarse_ridge(
    fine: xr.DataArray,
    coarse: xr.DataArray,
    *,
    alpha: float = 1e-3,
    footprint: xr.DataArray | None = None,
    cells: Any = None,
) -> Any:
    """Fit a pixel :class:`~xfusion.models.Ridge` from fine bands to a coarse field; computes.

    The fine bands are averaged to the coarse grid (with each observation's footprint weights,
    as the coarse value averages the fine field) and the ridge is fitted against the coarse
    field there; predict with it on the fine bands for a fine field. The ridge is linear, so its
    fine prediction averages back (with the same weights) to its coarse one.

    Parameters
    ----------
    fine : DataArray
        Fine bands ``(time, band, y, x)``.
    coarse : DataArray
        The coarse field ``(time, 1, y, x)`` on a grid that ``fine``'s refines.
    alpha : float
        Regularisation of the ridge.
    footprint : DataArray, optional
        ``(time, 1, y, x)`` weights of the coarse observations on the fine grid.
    cells : array-like of bool, optional
        ``(y, x)`` map of the coarse pixels to fit on (e.g. outside a held-out region).

    Returns
    -------
    Ridge
        The fitted model.

    Examples
    --------
    >>> import xfusion as xf
    >>> scene = xf.datasets.synthetic_scene("downscale", size=40)
    >>> ridge = fit_coarse_ridge(scene["modis"], scene["tropomi"])
    >>> ridge.coef_.shape
    (2,)
    """
    from xfusion.models.ridge import Ridge

    if coarse.sizes.get("band", 1) != 1:
        raise InputError(f"coarse has {coarse.sizes['band']} bands; expected one field")
    if footprint is None:
        averaged = resample(fine, coarse, "average")
    else:
        w = footprint.isel(band=0, drop=True).fillna(0.0)
        total = resample(footprint.fillna(0.0), coarse, "average").isel(band=0, drop=True)
        averaged = resample(fine * w, coarse, "average") / total.where(total > 0)
    target = coarse.isel(band=0, drop=True)
    if cells is not None:
        mask = xr.DataArray(
            np.asarray(cells, bool), dims=("y", "x"), coords={"y": coarse.y, "x": coarse.x}
        )
        averaged, target = averaged.where(mask), target.where(mask)
    return Ridge(alpha=alpha).fit(averaged, target)


def plot_downscaled(
    maps: Mapping[str, xr.DataArray],
    heldout: np.ndarray,
    *,
    time: int,
    units: str = "",
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Draw one period of fields side by side on one colour scale, the held-out strip dashed.

    Plotting computes: it reads the period of every map. The colour scale is the 2–98 %
    percentiles of all the maps' finite values; a dashed white line marks the first column of
    the held-out region on every map of its grid (a coarse observation among the maps has its
    own, smaller grid and no line).

    Parameters
    ----------
    maps : mapping of str to DataArray
        Panel title → ``(time, band, y, x)`` field (the first band is drawn).
    heldout : ndarray of bool
        ``(y, x)`` map of the held-out region on the fine grid.
    time : int
        Index of the period drawn.
    units : str
        Label of the colour bar.
    title : str, optional
        Suptitle (the date drawn, say).
    path : path, optional
        PNG file written when given.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per map, then the colour bar.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> dims = ("time", "band", "y", "x")
    >>> fine = xr.DataArray(np.arange(32.0).reshape(2, 1, 4, 4), dims=dims)
    >>> held = np.zeros((4, 4), bool); held[:, 2:] = True
    >>> fig = plot_downscaled({"coarse": fine[:, :, ::2, ::2], "fine": fine}, held, time=1)
    >>> [ax.get_title() for ax in fig.axes[:2]], [len(ax.lines) for ax in fig.axes[:2]]
    (['coarse', 'fine'], [0, 1])
    """
    from xfusion.viz import plot_map_row

    heldout = np.asarray(heldout, bool)
    images = {name: cube.isel(time=time, band=0).values for name, cube in maps.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in images.values()])
    vmin, vmax = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    style = {"vmin": vmin, "vmax": vmax, "cmap": "viridis"}
    fig = plot_map_row([(name, image, style) for name, image in images.items()], title=title)
    columns = np.flatnonzero(heldout.any(axis=0))
    for ax, image in zip(fig.axes, images.values(), strict=True):
        if columns.size and image.shape == heldout.shape:
            ax.axvline(columns[0] - 0.5, color="white", lw=1, ls="--")
    fig.colorbar(fig.axes[0].images[0], ax=fig.axes, shrink=0.8, label=units)
    if path is not None:
        fig.savefig(path)
    return fig
