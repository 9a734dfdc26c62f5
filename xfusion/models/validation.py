"""Spatial cross-validation: train on some spatial blocks of a cube, score on the held-out one.

Neighbouring pixels are alike, so a random split of pixels scores a model on near-copies of its
training pixels; holding out whole spatial blocks measures how it does on new ground.
:func:`cross_validate` trains a fresh copy of the model (scikit-learn ``clone`` semantics:
``type(model)(**model.get_params())``) per fold and per seed and returns one row of scores per
(fold, seed): the spread over seeds shows how stable the training is, the spread over folds how
the skill varies across the scene.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import InputError

__all__ = ["cross_validate", "spatial_folds"]

_METRICS = ("rmse", "mae", "r2")


def spatial_folds(cube: xr.DataArray, blocks: Any = 3) -> xr.DataArray:
    """Fold ids on the grid of ``cube``: ``blocks × blocks`` contiguous blocks, or given labels.

    Parameters
    ----------
    cube : xarray.DataArray
        A cube with dims ``y`` and ``x``.
    blocks : int or array-like
        Number of blocks per axis (rows and columns are split as evenly as possible, with
        :func:`numpy.array_split`; fold ``i·blocks + j`` is row block ``i``, column block ``j``),
        or a ``(y, x)`` array (numpy or DataArray) of integer fold ids; negative ids and NaN
        mark pixels used by no fold.

    Returns
    -------
    xarray.DataArray
        int ``(y, x)`` fold ids with the cube's coordinates (-1: in no fold).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.zeros((1, 4, 4)), dims=("band", "y", "x"))
    >>> spatial_folds(cube, 2).values.tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    """
    if not isinstance(cube, xr.DataArray) or "y" not in cube.dims or "x" not in cube.dims:
        dims = cube.dims if isinstance(cube, xr.DataArray) else type(cube).__name__
        raise InputError(f"cube must be a DataArray with dims 'y' and 'x'; got {dims}")
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    coords = {d: cube[d] for d in ("y", "x") if d in cube.coords}
    if np.ndim(blocks) == 0:
        if isinstance(blocks, bool) or not float(blocks).is_integer() or int(blocks) < 1:
            raise InputError(
                f"blocks must be an int >= 1 or a (y, x) array of fold ids; got {blocks!r}"
            )
        k = int(blocks)
        if k == 1:
            raise InputError("blocks=1 leaves nothing to train on; expected at least 2 per axis")
        if k > min(ny, nx):
            raise InputError(
                f"blocks={k} per axis is more than the cube's {ny}×{nx} px allow; expected at "
                f"most {min(ny, nx)}"
            )
        rows = np.concatenate(
            [np.full(len(p), i) for i, p in enumerate(np.array_split(range(ny), k))]
        )
        cols = np.concatenate(
            [np.full(len(p), j) for j, p in enumerate(np.array_split(range(nx), k))]
        )
        ids = rows[:, None] * k + cols[None, :]
    else:
        if isinstance(blocks, xr.DataArray):
            if set(blocks.dims) != {"y", "x"}:
                raise InputError(f"a fold-id array must have dims ('y', 'x'); got {blocks.dims}")
            blocks = blocks.transpose("y", "x").values  # xf: computes the fold ids (metadata)
        labels = np.asarray(blocks, dtype=np.float64)
        if labels.shape != (ny, nx):
            raise InputError(
                f"fold ids have shape {labels.shape}; expected the cube's grid ({ny}, {nx})"
            )
        finite = np.isfinite(labels)
        if (labels[finite] != np.round(labels[finite])).any():
            raise InputError("fold ids must be integers (negative or NaN: in no fold)")
        ids = np.where(finite & (labels >= 0), labels, -1).astype(np.int64)
        if len(np.unique(ids[ids >= 0])) < 2:
            raise InputError(
                f"fold ids name {len(np.unique(ids[ids >= 0]))} fold(s); expected at least 2"
            )
    return xr.DataArray(ids, dims=("y", "x"), coords=coords, name="fold")


def _fresh(model: Any, seed: int | None) -> Any:
    if not hasattr(model, "get_params"):
        raise InputError(
            f"model must be an estimator with get_params() (scikit-learn style); got "
            f"{type(model).__name__}"
        )
    params = model.get_params(deep=False)
    if seed is not None:
        for name in ("seed", "random_state"):
            if name in params:
                params[name] = int(seed)
                break
    return type(model)(**params)


def _kind(model: Any) -> str:
    from xfusion.models.estimators import _UNetEstimator
    from xfusion.models.ridge import _Estimator

    if isinstance(model, _UNetEstimator):
        return "unet"
    if isinstance(model, _Estimator):
        return "cube"
    return "table"


def _fit(model: Any, kind: str, cube: xr.DataArray, target: xr.DataArray, **fit_kwargs) -> None:
    if kind == "cube":
        model.fit(cube, target, **fit_kwargs)
        return
    if kind == "unet":
        if "time" in cube.dims:
            raise InputError("cross_validate of a U-Net takes a cube without a time dim")
        x = cube.transpose("band", "y", "x").expand_dims("sample")
        y = target if "band" in target.dims else target.expand_dims("band")
        model.fit(x, y.transpose("band", "y", "x").expand_dims("sample"), **fit_kwargs)
        return
    # any scikit-learn estimator: a table of the training pixels, columns named by band
    lead = [d for d in cube.dims if d != "band"]
    rows = cube.transpose(*lead, "band").values.reshape(-1, cube.sizes["band"])  # xf: computes
    y = target.broadcast_like(cube.isel(band=0, drop=True))
    if "band" in target.dims:
        yv = y.transpose(*lead, "band").values.reshape(len(rows), -1)  # xf: computes
    else:
        yv = y.transpose(*lead).values.reshape(-1)  # xf: computes
    ok = np.isfinite(rows).all(axis=1) & np.isfinite(yv.reshape(len(rows), -1)).all(axis=1)
    frame = pd.DataFrame(rows[ok], columns=[str(b) for b in cube.band.values])
    model.fit(frame, yv[ok], **fit_kwargs)


def _predict(model: Any, kind: str, cube: xr.DataArray) -> xr.DataArray:
    if kind == "table":
        from xfusion.models.predict import predict

        return predict(cube, model)
    return model.predict(cube)


def _scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Metrics per target band (last axis), averaged over bands; pixels with NaN left out."""
    out = {m: [] for m in _METRICS}
    n = 0
    for b in range(truth.shape[-1]):
        p, t = pred[..., b].ravel(), truth[..., b].ravel()
        ok = np.isfinite(p) & np.isfinite(t)
        p, t = p[ok], t[ok]
        n += int(ok.sum())
        if not ok.any():
            for m in _METRICS:
                out[m].append(np.nan)
            continue
        err = p - t
        ss_tot = float(np.sum((t - t.mean()) ** 2))
        out["rmse"].append(float(np.sqrt(np.mean(err**2))))
        out["mae"].append(float(np.mean(np.abs(err))))
        out["r2"].append(1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"n": n, **{m: float(np.nanmean(v)) for m, v in out.items()}}


def cross_validate(
    model: Any,
    cube: xr.DataArray,
    target: xr.DataArray,
    *,
    blocks: Any = 3,
    seeds: int | Sequence[int] = (0,),
    fit_kwargs: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Spatially blocked cross-validation of ``model`` on ``cube`` against ``target``.

    For every fold and every seed, a fresh copy of ``model`` (same ``get_params()``; the seed
    set as its ``seed`` or ``random_state`` parameter when it has one) is trained on the pixels
    of the other folds (held-out target pixels are set to NaN, which every model here leaves
    out of its fit), predicts the cube, and is scored on the held-out fold's pixels.
    Computes (trains models); the cube and target may be Dask-backed.

    Parameters
    ----------
    model : estimator
        :class:`~xfusion.models.Ridge`, :class:`~xfusion.models.KernelRidge` (fitted on the cube
        directly), any scikit-learn estimator (fitted on a table of the training pixels, one
        column per band, and predicted blockwise with :func:`xfusion.models.predict.predict`),
        or :class:`~xfusion.models.UNetRegressor` (fitted on the whole cube as one patch with
        the held-out target masked: the held-out pixels' *inputs* are still seen as context,
        their targets are not).
    cube : xarray.DataArray
        ``(band, y, x)`` (or ``(time, band, y, x)`` for pixel models).
    target : xarray.DataArray
        On the cube's grid: ``(y, x)``, ``(time, y, x)`` or with a ``band`` dim for several
        targets. NaN pixels are not used for training nor scoring.
    blocks : int or array-like
        Blocks per axis (``blocks × blocks`` folds), or a ``(y, x)`` array of fold ids; see
        :func:`spatial_folds`.
    seeds : int or sequence of int
        Seeds (training repeats) per fold.
    fit_kwargs : dict, optional
        Passed to every ``fit``.

    Returns
    -------
    pandas.DataFrame
        One row per (fold, seed): ``fold``, ``seed``, ``n`` (held-out pixels scored), ``rmse``,
        ``mae``, ``r2`` (per target band, averaged over bands). Summarise e.g. with
        ``scores.groupby("seed")[["rmse", "r2"]].mean()``.

    Raises
    ------
    InputError
        A model without ``get_params``, a target not on the cube's grid, bad ``blocks``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from xfusion.models import Ridge
    >>> rng = np.random.default_rng(0)
    >>> cube = xr.DataArray(rng.normal(size=(2, 8, 8)), dims=("band", "y", "x"),
    ...                     coords={"band": ["a", "b"]})
    >>> target = 2 * cube.sel(band="a", drop=True) - cube.sel(band="b", drop=True) + 1
    >>> scores = cross_validate(Ridge(alpha=1e-6), cube, target, blocks=2, seeds=[0, 1])
    >>> scores[["fold", "seed", "n"]].values.tolist()[:3]
    [[0, 0, 16], [0, 1, 16], [1, 0, 16]]
    >>> bool((scores["r2"] > 0.999).all())
    True
    """
    if not isinstance(target, xr.DataArray):
        raise InputError(
            f"target must be a DataArray on the cube's grid; got {type(target).__name__}"
        )
    for d in ("y", "x"):
        if d not in target.dims or target.sizes[d] != cube.sizes.get(d):
            raise InputError(
                f"target must be on the cube's grid (dims y, x of sizes {cube.sizes.get('y')}, "
                f"{cube.sizes.get('x')}); got dims {dict(target.sizes)}"
            )
    folds = spatial_folds(cube, blocks)
    seed_list = [int(seeds)] if np.ndim(seeds) == 0 else [int(s) for s in seeds]
    if not seed_list:
        raise InputError("seeds must name at least one seed; got an empty sequence")
    fold_ids = np.unique(folds.values[folds.values >= 0])  # xf: computes the fold ids (numpy)
    kind = _kind(model)
    folds = folds.assign_coords({d: target[d] for d in ("y", "x") if d in target.coords})
    records = []
    for fold in fold_ids:
        held = folds == fold
        train_target = target.where(~held & (folds >= 0))
        for seed in seed_list:
            fitted = _fresh(model, seed)
            _fit(fitted, kind, cube, train_target, **(fit_kwargs or {}))
            pred = _predict(fitted, kind, cube)
            truth = target.where(held)
            if "band" not in target.dims:
                truth = truth.expand_dims("band")
            if pred.sizes["band"] != truth.sizes["band"]:
                raise InputError(
                    f"the model predicts {pred.sizes['band']} bands for {truth.sizes['band']} "
                    "target bands"
                )
            pred = pred.assign_coords(band=truth.band.values)
            dims = [d for d in truth.dims if d != "band"] + ["band"]
            truth_v = truth.transpose(*dims).values  # xf: computes the held-out scores
            pred_v = pred.where(held).transpose(*dims).values  # xf: computes the held-out scores
            records.append({"fold": int(fold), "seed": seed, **_scores(pred_v, truth_v)})
    return pd.DataFrame.from_records(records, columns=["fold", "seed", "n", *_METRICS])
