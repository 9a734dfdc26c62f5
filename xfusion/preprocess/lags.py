"""Multitemporal lag stacks: each image with its most recent earlier clear images as bands."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import EmptySelectionError, InputError
from xfusion.validate import check_unique_bands, check_unique_times, require_bands

__all__ = ["cloud_fraction", "lags"]

_DIMS = ("time", "band", "y", "x")


def cloud_fraction(da: xr.DataArray, cloud_score: Any = None) -> xr.DataArray:
    """Per-image cloud score over the cube's region, lazily (dims ``(time,)``).

    Parameters
    ----------
    da : xarray.DataArray
        Time series cube ``(time, band, y, x)``.
    cloud_score : None, str or xarray.DataArray
        ``None``: fraction of pixels where any band is NaN (masked clouds are NaN).
        A band name: mean of that band over the region (a cloud probability, or a 0/1 cloud flag
        gives the cloudy fraction), NaN pixels ignored. A DataArray ``(time,)``: the scores
        themselves. A DataArray ``(time, y, x)``: a cloud mask or probability, averaged over the
        region.

    Returns
    -------
    xarray.DataArray
        float64 scores along ``time`` (lazy where the input is chunked).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> data = np.ones((2, 1, 2, 2), "float32"); data[1, 0, 0, 0] = np.nan
    >>> cube = xr.DataArray(data, dims=("time", "band", "y", "x"), coords={"band": ["B1"]})
    >>> cloud_fraction(cube).values.tolist()
    [0.0, 0.25]
    """
    _check_cube(da)
    if cloud_score is None:
        score = da.isnull().any("band").mean(("y", "x"))
    elif isinstance(cloud_score, str):
        require_bands(da, cloud_score, role="cloud_score")
        score = da.sel(band=cloud_score).mean(("y", "x"), skipna=True)
    elif isinstance(cloud_score, xr.DataArray):
        if set(cloud_score.dims) not in ({"time"}, {"time", "y", "x"}):
            raise InputError(
                "cloud_score DataArray must have dims ('time',) of scores or ('time', 'y', 'x') "
                f"of a cloud mask; got {cloud_score.dims}"
            )
        if cloud_score.sizes["time"] != da.sizes["time"] or (
            "time" in cloud_score.coords
            and not np.array_equal(cloud_score.time.values, da.time.values)
        ):
            raise InputError(
                f"cloud_score has {cloud_score.sizes['time']} times that do not match the "
                f"cube's {da.sizes['time']} times"
            )
        score = cloud_score.astype(np.float64)
        if "y" in score.dims:
            if score.sizes["y"] != da.sizes["y"] or score.sizes["x"] != da.sizes["x"]:
                raise InputError(
                    f"cloud_score mask of shape {dict(score.sizes)} does not match the cube's "
                    f"(y, x) shape {(da.sizes['y'], da.sizes['x'])}"
                )
            score = score.mean(("y", "x"), skipna=True)
        score = score.drop_vars([c for c in score.coords if c != "time"])
    else:
        raise InputError(
            "cloud_score must be None, a band name or a DataArray; "
            f"got {type(cloud_score).__name__}"
        )
    return score.astype(np.float64).assign_coords(time=da.time.values)


def lags(
    da: xr.DataArray,
    n: int,
    *,
    cloud_score: Any = None,
    max_cloud: float = 0.1,
    targets: Any = None,
) -> xr.DataArray:
    """Stack each image with its ``n`` most recent earlier clear images as extra bands.

    This is a **computing** function: it computes the per-image cloud scores (see
    :func:`cloud_fraction`) in exactly one Dask compute to choose the lags, and then builds the
    stacked cube lazily. An image is *clear* when its score is ``<= max_cloud`` (a NaN score is
    not clear). A target image needs not be clear itself: it is the image to be cloud-masked.

    Parameters
    ----------
    da : xarray.DataArray
        Time series cube ``(time, band, y, x)``; times need not be sorted.
    n : int
        Number of lags (at least 1).
    cloud_score : None, str or xarray.DataArray
        How cloudy each image is; see :func:`cloud_fraction` (default: NaN fraction).
    max_cloud : float
        Largest score of a clear image.
    targets : time label or sequence of them, optional
        Targets to build; by default every image that has ``n`` earlier clear images.

    Returns
    -------
    xarray.DataArray
        Dims ``(time, band, y, x)``: ``time`` holds the targets, ``band`` the original bands
        followed by ``f"{band}_lag_{k}"`` for ``k = 1..n`` (lag 1 the most recent).
        ``attrs["lag_times"]`` maps each target's ISO time to the ISO times of its lags, and the
        coordinates ``time_lag_k`` along ``time`` hold the same timestamps.

    Raises
    ------
    InputError
        ``n`` is larger than the number of clear images that precede any target, or two images
        share a time (which one is "earlier" would be undefined).
    BandError
        Band names repeat.
    EmptySelectionError
        No target has ``n`` earlier clear images.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> data = np.arange(4 * 2 * 2, dtype="float32").reshape(4, 1, 2, 2)
    >>> data[1] = np.nan  # a cloudy image
    >>> cube = xr.DataArray(data, dims=("time", "band", "y", "x"), coords={
    ...     "time": pd.date_range("2020-01-01", periods=4, freq="8D"), "band": ["B1"]})
    >>> out = lags(cube, 2)
    >>> out.band.values.tolist()
    ['B1', 'B1_lag_1', 'B1_lag_2']
    >>> out.attrs["lag_times"]
    {'2020-01-25T00:00:00': ['2020-01-17T00:00:00', '2020-01-01T00:00:00']}
    """
    _check_cube(da)
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InputError(f"n must be an integer >= 1 (the number of lags); got {n!r}")
    n = int(n)
    if da.sizes["time"] == 0:
        raise EmptySelectionError("cube has no time steps; lags need a time series")

    order = np.argsort(da.time.values, kind="stable")
    series = da.isel(time=order)
    score = cloud_fraction(da, cloud_score).isel(time=order)
    (scores,) = dask.compute(score.data)  # xf: computes per-image cloud fractions to choose lags
    clear = scores <= max_cloud  # NaN scores compare False: not clear
    times = series.time.values
    # clear_before[i]: indices of the clear images strictly earlier than image i, newest first.
    earlier = [np.flatnonzero(clear & (times < t))[::-1] for t in times]

    wanted = _target_positions(times, targets, series.time)
    available = {i: len(earlier[i]) for i in wanted}
    chosen = [i for i in wanted if available[i] >= n]
    most = max(available.values(), default=0)
    if targets is not None and len(chosen) < len(wanted):
        short = {_iso(times[i]): available[i] for i in wanted if available[i] < n}
        raise InputError(
            f"{n} lags requested but some targets have fewer earlier clear images "
            f"(max_cloud={max_cloud}): {short}"
        )
    if not chosen:
        if n > int(clear.sum()):
            raise InputError(
                f"{n} lags requested but the series has only {int(clear.sum())} clear images "
                f"(score <= max_cloud={max_cloud}) among {len(times)}; at most {most} earlier "
                "clear images precede any image"
            )
        raise EmptySelectionError(
            f"no image has {n} earlier clear images (max_cloud={max_cloud}); at most {most} "
            "precede any image"
        )

    lag_index = np.array([earlier[i][:n] for i in chosen], dtype=int)  # (target, lag)
    base = series.isel(time=chosen)
    target_time = base.time
    per_time = [c for c in series.coords if c != "time" and "time" in series[c].dims]
    pieces = [base]
    for k in range(1, n + 1):
        lagged = series.isel(time=lag_index[:, k - 1]).drop_vars(per_time)
        lagged = lagged.assign_coords(time=target_time.values)
        lagged = lagged.assign_coords(band=[f"{b}_lag_{k}" for b in series.band.values])
        pieces.append(lagged)
    out = xr.concat(pieces, dim="band", coords="minimal", compat="override", join="override")
    for k in range(1, n + 1):
        out = out.assign_coords({f"time_lag_{k}": ("time", times[lag_index[:, k - 1]])})
    out.attrs = {
        **da.attrs,
        "lag_times": {
            _iso(times[i]): [_iso(times[j]) for j in row]
            for i, row in zip(chosen, lag_index, strict=True)
        },
    }
    return out.transpose(*_DIMS, ...)


def _check_cube(da: Any) -> None:
    if not isinstance(da, xr.DataArray):
        raise InputError(f"expected an xarray.DataArray time series; got {type(da).__name__}")
    missing = [d for d in _DIMS if d not in da.dims]
    if missing:
        raise InputError(
            f"lags need a time series cube with dims {_DIMS}; cube has dims {list(da.dims)}"
        )
    check_unique_bands(da, "lags")
    check_unique_times(da, "lags")


def _target_positions(times: np.ndarray, targets: Any, time_coord: xr.DataArray) -> list[int]:
    if targets is None:
        return list(range(len(times)))
    labels: Sequence[Hashable] = (
        [targets] if isinstance(targets, str) or np.ndim(targets) == 0 else list(targets)
    )
    index = time_coord.to_index()
    positions = []
    for label in labels:
        try:
            pos = index.get_loc(pd.Timestamp(label) if index.dtype.kind == "M" else label)
        except (KeyError, ValueError, TypeError) as err:
            raise InputError(
                f"target {label!r} is not a time of the cube; times are {[_iso(t) for t in times]}"
            ) from err
        if not isinstance(pos, int | np.integer):
            raise InputError(f"target {label!r} matches several images; give a unique time")
        positions.append(int(pos))
    return positions


def _iso(t: Any) -> str:
    if isinstance(t, np.datetime64):
        return str(np.datetime_as_string(t, unit="s"))
    if hasattr(t, "isoformat"):
        return t.isoformat()
    return str(t)
