"""Temporal composites: NaN-aware median/mean/min/max over a time window or per period.

A chunked cube is rechunked so that each period's images form one time chunk per spatial block,
then every block is reduced on its own: the graph never holds the whole time series of the
cube, only one period of one spatial block per task, and no ``groupby`` materialises the data.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, TypeVar

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr
from dask.utils import parse_bytes

from xfusion.bands import band_kinds
from xfusion.errors import BandError, EmptySelectionError, InputError
from xfusion.validate import check_float_nodata

__all__ = ["COMPOSITE_METHODS", "composite"]

T_Xarray = TypeVar("T_Xarray", xr.DataArray, xr.Dataset)

#: The reductions :func:`composite` accepts for ``how``.
COMPOSITE_METHODS: tuple[str, ...] = ("median", "mean", "min", "max")


def _reduce_time(block: np.ndarray, how: str) -> np.ndarray:
    """NaN-aware reduction over axis 0 (kept, length 1); all-NaN series give NaN silently.

    numpy's ``nanmedian``/``nanmean``/``nanmin`` warn on all-NaN series (a normal case for
    cloudy pixels), so the reductions are written without them.
    """
    if how in ("min", "max"):
        # fmin/fmax ignore NaN and give NaN only where every value is NaN.
        ufunc = np.fmin if how == "min" else np.fmax
        return ufunc.reduce(block, axis=0, keepdims=True)
    count = np.count_nonzero(~np.isnan(block), axis=0)[None]
    if how == "mean":
        # One image at a time, in float64: numpy's own reduction order depends on the block's
        # shape (pairwise along a contiguous axis), so the result would depend on the chunking.
        total = np.zeros((1, *block.shape[1:]), dtype=np.float64)
        for image in block:
            total[0] += np.where(np.isnan(image), 0.0, image)
        out = np.full(total.shape, np.nan, dtype=block.dtype)
        return np.divide(total, count, out=out, where=count > 0, casting="unsafe")
    # median: NaN sorts last, so the valid values of each series come first; an all-NaN series
    # picks its first (NaN) element.
    ordered = np.sort(block, axis=0)
    lower = np.take_along_axis(ordered, np.maximum((count - 1) // 2, 0), axis=0)
    upper = np.take_along_axis(ordered, np.minimum(count // 2, block.shape[0] - 1), axis=0)
    return ((lower + upper) / 2).astype(block.dtype, copy=False)


_SPATIAL = ("y", "x")


def _period_chunks(data: dsa.Array, sizes: list[int], spatial_axes: list[int]) -> dict[int, Any]:
    """Chunks with one period per time chunk, splitting space where blocks would grow too big.

    A block then holds a whole period; when that exceeds Dask's ``array.chunk-size`` the spatial
    chunks are made smaller (``"auto"``) so every task stays within the configured limit.
    """
    chunks: dict[int, Any] = {0: tuple(sizes)}
    limit = parse_bytes(dask.config.get("array.chunk-size"))
    block = max(sizes) * data.dtype.itemsize * math.prod(max(c) for c in data.chunks[1:])
    if block > limit and spatial_axes:
        chunks.update({ax: "auto" for ax in spatial_axes})
    return chunks


def _time_index(da: xr.DataArray) -> pd.DatetimeIndex:
    message = (
        "composite windows and periods need datetime values on 'time'; got dtype "
        f"{da['time'].dtype}"
    )
    if da["time"].dtype.kind not in "MO":
        raise InputError(message)
    try:
        return pd.DatetimeIndex(da["time"].values)
    except (TypeError, ValueError) as err:
        raise InputError(message) from err


def _parse_time(value: Any, name: str) -> Any:
    if value is None:
        return None
    try:
        pd.Timestamp(value)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name}={value!r} is not a date; expected e.g. '2015-07-01'") from err
    return value


def _groups(
    times: pd.DatetimeIndex, freq: Any, start: Any
) -> tuple[list[int], pd.DatetimeIndex | None]:
    """Sizes of the contiguous runs of images per period, and the period starts."""
    if freq is None:
        return [len(times)], None
    origin = pd.Timestamp(start) if start is not None else "start_day"
    positions = pd.Series(np.arange(len(times)), index=times)
    try:
        resampler = positions.resample(freq, label="left", closed="left", origin=origin)
        counts = resampler.count()
    except (TypeError, ValueError) as err:
        raise InputError(
            f"freq={freq!r} is not a pandas offset; expected e.g. 'YS', 'MS' or '16D'"
        ) from err
    counts = counts[counts > 0]  # empty periods are dropped
    return [int(c) for c in counts.to_numpy()], pd.DatetimeIndex(counts.index)


def _check_continuous(da: xr.DataArray, how: str) -> None:
    """Refuse reducing bit-flag or class bands with a numeric reduction (metadata only)."""
    if "band" not in da.dims:
        return
    odd = {b: k for b, k in band_kinds(da).items() if k != "continuous"}
    if odd:
        listed = ", ".join(f"{b!r} ({k})" for b, k in odd.items())
        raise BandError(
            f"composite {how!r} would mix the codes of non-continuous bands {listed}: a {how} of "
            "bit flags or class values is no flag or class; mask with them first (mask_bits / "
            "mask_classes drop them) or drop them (.drop_sel(band=[...]))"
        )


def composite(
    da: T_Xarray,
    how: str = "median",
    *,
    freq: Any = None,
    start: Any = None,
    end: Any = None,
) -> T_Xarray:
    """Reduce a time series of images to one composite per window or per period.

    The reduction ignores NaN: a pixel's composite uses its valid observations only, and a pixel
    with no valid observation in a period is NaN (never 0), without "All-NaN slice" warnings.

    Parameters
    ----------
    da : xarray.DataArray or xarray.Dataset
        Cube with a ``time`` dimension; a Dataset is handled variable by variable (variables
        without ``time`` are returned unchanged).
    how : {"median", "mean", "min", "max"}, default "median"
        The NaN-aware reduction over time.
    freq : str or pandas offset, optional
        One composite per period (``"YS"`` years, ``"MS"`` months, ``"16D"`` 16-day periods, any
        pandas offset). The result keeps a ``time`` dimension labelled with the period starts;
        periods without any image are dropped. Fixed-length periods such as ``"16D"`` count from
        ``start`` when it is given, otherwise from midnight of the first image's day. Without
        ``freq`` the result is one composite with no ``time`` dimension.
    start, end : str or datetime-like, optional
        Window of images to use, both ends included (``end="2015-12-31"`` includes that whole
        day, as in pandas' partial-string indexing).

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        Floating-point composite (``float32`` unless ``da`` is ``float64``); chunked like ``da``
        in space, with one chunk per period along ``time`` (spatial chunks are made smaller
        where one period of one block would exceed Dask's ``array.chunk-size``). Coordinates
        along ``time`` other than ``time`` itself are dropped.

    Raises
    ------
    EmptySelectionError
        The window ``start``/``end`` holds no image; the message gives the cube's time range.
    BandError
        The cube holds bit-flag or categorical bands (``band_kind``, see :mod:`xfusion.bands`;
        QA60, QA_PIXEL, BQA, SCL by name): their codes cannot be averaged, mask with them or
        drop them first.
    InputError
        ``da`` has no ``time`` dimension, ``how`` or ``freq`` is unknown, a date is invalid, or
        ``da`` is an integer cube that declares a nodata value (``_FillValue``/``nodata``
        attribute), which the reduction would take for data (convert to float with NaN first).
        Integer cubes without a declared nodata value are composited as float32.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> cube = xr.DataArray(
    ...     np.array([1.0, np.nan, 3.0, 10.0], dtype="float32").reshape(4, 1, 1),
    ...     dims=("time", "y", "x"),
    ...     coords={"time": pd.to_datetime(
    ...         ["2015-07-01", "2015-08-01", "2015-09-01", "2016-01-05"])})
    >>> composite(cube, "median", start="2015-07-01", end="2015-12-31").values
    array([[2.]], dtype=float32)
    >>> composite(cube, "max", freq="YS").values.ravel()
    array([ 3., 10.], dtype=float32)
    """
    if how not in COMPOSITE_METHODS:
        raise InputError(
            f"how={how!r} is not a composite method; expected one of {COMPOSITE_METHODS}"
        )
    if isinstance(da, xr.Dataset):
        if "time" not in da.dims:
            raise InputError(
                f"composite needs a 'time' dimension; dataset dims are {tuple(da.dims)}"
            )

        def _one(var: xr.DataArray) -> xr.DataArray:
            if "time" not in var.dims:
                return var
            return composite(var, how, freq=freq, start=start, end=end)

        return da.map(_one, keep_attrs=True)
    if not isinstance(da, xr.DataArray):
        raise InputError(f"composite expects a DataArray or Dataset; got {type(da).__name__}")
    if "time" not in da.dims:
        raise InputError(f"composite needs a 'time' dimension; cube dims are {da.dims}")
    check_float_nodata(da, "composite")
    _check_continuous(da, how)
    start = _parse_time(start, "start")
    end = _parse_time(end, "end")

    if freq is None and start is None and end is None:
        times = None
    else:
        times = _time_index(da)
        if not times.is_monotonic_increasing:
            order = np.argsort(times.to_numpy(), kind="stable")
            da = da.isel(time=order)
            times = times[order]
        if start is not None or end is not None:
            try:
                window = times.slice_indexer(start, end)
            except (TypeError, ValueError, KeyError) as err:
                raise InputError(
                    f"cannot read the window start={start!r}, end={end!r} as dates; expected "
                    "dates such as '2015-07-01'"
                ) from err
            selected = times[window]
            if len(selected) == 0:
                available = (
                    f"{times.min().isoformat()} to {times.max().isoformat()} ({len(times)} images)"
                    if len(times)
                    else "empty (no images)"
                )
                raise EmptySelectionError(
                    f"no images in the composite window {start or '...'} to {end or '...'}; "
                    f"the cube's time range is {available}"
                )
            da = da.isel(time=window)
            times = selected
    if da.sizes["time"] == 0:
        raise EmptySelectionError("composite got a cube with no images (time has length 0)")
    sizes, labels = _groups(times, freq, start) if freq is not None else ([da.sizes["time"]], None)

    out_dtype = np.dtype(np.float64) if da.dtype == np.float64 else np.dtype(np.float32)
    other = [d for d in da.dims if d != "time"]
    ordered = da.transpose("time", *other)
    data = ordered.data
    if data.dtype != out_dtype:
        data = data.astype(out_dtype)
    if isinstance(data, dsa.Array):
        data = data.rechunk(
            _period_chunks(data, sizes, [other.index(d) + 1 for d in _SPATIAL if d in other])
        )
        reduced = data.map_blocks(
            _reduce_time,
            how=how,
            chunks=((1,) * len(sizes), *data.chunks[1:]),
            dtype=out_dtype,
            meta=np.array((), dtype=out_dtype),
        )
    else:
        bounds = np.cumsum([0, *sizes])
        reduced = np.concatenate(
            [_reduce_time(data[a:b], how) for a, b in itertools.pairwise(bounds)]
        )

    coords = {
        name: coord
        for name, coord in ordered.coords.items()
        if "time" not in coord.dims and name != "time"
    }
    if labels is None:
        result = xr.DataArray(reduced[0], dims=other, coords=coords, attrs=da.attrs)
        # set after construction: xarray would otherwise take the dask array's name
        result.name = da.name
        return result
    coords["time"] = labels.to_numpy()
    result = xr.DataArray(reduced, dims=("time", *other), coords=coords, attrs=da.attrs)
    result.name = da.name
    return result.transpose(*da.dims)
