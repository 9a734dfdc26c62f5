"""Image series on one calendar: common composites, periods as bands, patches of every period.

Two sensors seldom image on the same days. :func:`common_composites` aggregates two series
(and, optionally, the per-date footprint weights of the second) to the same periods
(:func:`xfusion.composite`) and keeps the periods both have. :func:`stack_time` turns a
``(time, band, y, x)`` series into one ``(band, y, x)`` cube whose bands are ``"<period>|<band>"``,
so that :func:`xfusion.patches` cuts every period at the same places in one draw;
:func:`series_patches` does that and returns **one sample per location and period**, the shape a
model trained on single dates takes. :func:`time_as_bands` writes a series as one band per period
(a GeoTIFF of the season). All are lazy except :func:`series_patches`, which computes the patches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from xfusion.errors import InputError
from xfusion.preprocess.composite import composite
from xfusion.preprocess.sample import patches

__all__ = ["common_composites", "series_patches", "stack_time", "time_as_bands"]


def _dates(times: Any) -> list[str]:
    return [str(t)[:10] for t in np.asarray(times)]


def common_composites(
    first: xr.DataArray,
    second: xr.DataArray,
    *,
    freq: str,
    start: Any,
    how: tuple[str, str] = ("median", "mean"),
    footprint: xr.DataArray | None = None,
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray | None]:
    """Composite two series over the same periods and keep the periods both have (lazy).

    Parameters
    ----------
    first, second : DataArray
        ``(time, band, y, x)`` series (their grids may differ).
    freq : str
        Length of a period (pandas offset, e.g. ``"16D"``).
    start : str or datetime-like
        Start of the first period (anchors every period of both series).
    how : (str, str)
        Reduction of each series within a period (see :func:`xfusion.composite`).
    footprint : DataArray, optional
        Per-date weights of ``second``'s observations (on any grid); averaged over each period
        and required for every common period.

    Returns
    -------
    (DataArray, DataArray, DataArray or None)
        ``first``, ``second`` and ``footprint`` composites on the common periods.

    Raises
    ------
    InputError
        No common period, or a common period without footprint.

    Examples
    --------
    >>> import xfusion as xf
    >>> scene = xf.datasets.synthetic_scene("downscale", size=40)
    >>> fine, coarse, _ = common_composites(scene["modis"], scene["tropomi"], freq="32D",
    ...                                     start="2019-05-09")
    >>> fine.sizes["time"] == coarse.sizes["time"], _dates(fine.time)[0]
    (True, '2019-05-09')
    """
    first = composite(first, how[0], freq=freq, start=start)
    second = composite(second, how[1], freq=freq, start=start)
    if footprint is not None:
        footprint = composite(footprint, "mean", freq=freq, start=start)
    common = np.intersect1d(first.time.values, second.time.values)
    if common.size == 0:
        raise InputError(
            f"the two series share no {freq} period: periods {_dates(first.time.values)} and "
            f"{_dates(second.time.values)}"
        )
    if footprint is not None:
        missing = np.setdiff1d(common, footprint.time.values)
        if missing.size:
            raise InputError(
                f"the footprints have no {freq} period {_dates(missing)} of the observations; "
                "expected one footprint per observation"
            )
        footprint = footprint.sel(time=common)
    return first.sel(time=common), second.sel(time=common), footprint


def stack_time(series: xr.DataArray) -> xr.DataArray:
    """Return a ``(time, band, y, x)`` series as a ``(band, y, x)`` cube (lazy).

    Bands are named ``"<period index>|<band>"``, period by period; the cube has one chunk along
    ``band`` (patches are then cut from a few large blocks, not many thin ones).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> series = xr.DataArray(np.zeros((2, 2, 3, 3)), dims=("time", "band", "y", "x"),
    ...                       coords={"band": ["red", "nir"]})
    >>> stack_time(series).band.values.tolist()
    ['0|red', '0|nir', '1|red', '1|nir']
    """
    if set(series.dims) != {"time", "band", "y", "x"}:
        raise InputError(f"series has dims {tuple(series.dims)}; expected (time, band, y, x)")
    names = [f"{t}|{b}" for t in range(series.sizes["time"]) for b in series.band.values]
    stacked = series.transpose("time", "band", "y", "x").stack(tb=("time", "band"))
    stacked = stacked.drop_vars(["tb", "time", "band"]).rename(tb="band")
    stacked = stacked.assign_coords(band=names).transpose("band", "y", "x")
    return stacked.chunk({"band": -1}) if stacked.chunks is not None else stacked


def series_patches(
    inputs: xr.DataArray,
    target: xr.DataArray,
    region: xr.DataArray,
    *,
    size: int,
    n: int,
    seed: int = 0,
    stride: int | None = None,
    footprint: xr.DataArray | None = None,
) -> xr.Dataset:
    """Cut patches of every period of a series at the same places: one sample per place and period.

    The places are drawn once for all periods (:func:`xfusion.patches` on :func:`stack_time`
    of both series, at most 10 % nodata), so a patch never mixes periods. This function
    computes: it returns the patches in memory.

    Parameters
    ----------
    inputs, target : DataArray
        ``(time, band, y, x)`` series on one grid and the same periods.
    region : DataArray
        Boolean ``(y, x)`` map of where patches may lie.
    size, n, seed, stride
        As :func:`xfusion.patches`: patch side, number of places, seed, origins on multiples of
        ``stride``.
    footprint : DataArray, optional
        ``(time, 1, y, x)`` weights of the target's observations, cut at the same places.

    Returns
    -------
    xarray.Dataset
        ``inputs (sample, band, y, x)``, ``target (sample, target_band, y, x)`` and, with a
        footprint, ``footprint (sample, y, x)``; samples are place-major (place 0's periods,
        then place 1's).

    Raises
    ------
    EmptySelectionError
        No place in ``region`` with at most 10 % nodata (:func:`xfusion.patches`).
    InputError
        A footprint with several bands.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> dims = ("time", "band", "y", "x")
    >>> x = xr.DataArray(np.ones((3, 2, 8, 8)), dims=dims, coords={"band": ["a", "b"]})
    >>> y = xr.DataArray(np.ones((3, 1, 8, 8)), dims=dims, coords={"band": ["t"]})
    >>> ds = series_patches(x, y, xr.DataArray(np.ones((8, 8), bool), dims=("y", "x")),
    ...                     size=4, n=2)
    >>> ds["inputs"].shape, ds["target"].shape
    ((6, 2, 4, 4), (6, 1, 4, 4))
    """
    n_time, bands = inputs.sizes["time"], [str(b) for b in inputs.band.values]
    goals = [str(b) for b in target.band.values]
    goal = stack_time(target)
    if footprint is not None:  # cut with the target: the same windows
        if footprint.sizes.get("band", 1) != 1:
            raise InputError(f"footprint has {footprint.sizes['band']} bands; expected one")
        weights = stack_time(footprint.assign_coords(band=["footprint"]))
        goal = xr.concat([goal, weights], dim="band", coords="minimal", compat="override")
    ds = patches(stack_time(inputs), goal, size=size, n=n, seed=seed, regions=region, stride=stride)
    x = ds["inputs"].values.reshape(-1, n_time, len(bands), size, size)  # in memory already
    cut = ds["target"].values  # bands: (period 0 targets, period 1 targets, ..., weights ...)
    y = cut[:, : n_time * len(goals)].reshape(-1, n_time, len(goals), size, size)
    data = {
        "inputs": (("sample", "band", "y", "x"), x.reshape(-1, len(bands), size, size)),
        "target": (("sample", "target_band", "y", "x"), y.reshape(-1, len(goals), size, size)),
    }
    if footprint is not None:
        data["footprint"] = (
            ("sample", "y", "x"),
            cut[:, n_time * len(goals) :].reshape(-1, size, size),
        )
    return xr.Dataset(data, coords={"band": bands, "target_band": goals})


def time_as_bands(series: xr.DataArray) -> xr.DataArray:
    """Return a ``(time, 1, y, x)`` series as ``(band, y, x)``: one band per period (lazy).

    Bands are numbered from 1 (a GeoTIFF's), their dates in ``attrs["long_name"]``; ``units``
    is kept.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> dates = pd.to_datetime(["2019-05-09", "2019-05-25"])
    >>> cube = time_as_bands(xr.DataArray(np.zeros((2, 1, 3, 4)), coords={"time": dates},
    ...                                   dims=("time", "band", "y", "x")))
    >>> cube.dims, cube.band.values.tolist(), cube.attrs["long_name"]
    (('band', 'y', 'x'), [1, 2], ('2019-05-09', '2019-05-25'))
    """
    single = series.isel(band=0, drop=True)
    dates = _dates(single.time.values)
    cube = (
        single.drop_vars("time")
        .rename(time="band")
        .assign_coords(band=np.arange(1, 1 + len(dates)))
    )
    cube.attrs = {"long_name": tuple(dates), "units": series.attrs.get("units", "")}
    return cube
