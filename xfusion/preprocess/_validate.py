"""Cheap checks of a cube's metadata, shared by the preprocessing functions and the models.

Every check reads dims, dtypes, coordinates and attributes only, never pixel values, so it can
run in lazy functions without computing anything. Each raises the most specific
:mod:`xfusion.errors` class with a message naming the bad value and what was expected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import BandError, InputError

__all__ = ["check_float_nodata", "check_unique_bands", "check_unique_times", "declared_nodata"]

_NODATA_KEYS = ("_FillValue", "nodata", "missing_value")


def _repeated(values: Any) -> list[Hashable]:
    counts = Counter(values)
    return [v for v, c in counts.items() if c > 1]


def check_unique_bands(da: xr.DataArray, what: str) -> None:
    """Raise :class:`BandError` when the cube's ``band`` coordinate repeats a name.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.zeros((2, 1, 1)), dims=("band", "y", "x"),
    ...                     coords={"band": ["B02", "B02"]})
    >>> check_unique_bands(cube, "standardize")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xfusion.errors.BandError: standardize: band names must be unique; ['B02'] repeat in ...
    """
    if "band" not in da.coords or da["band"].ndim != 1:
        return
    names = [str(b) for b in da["band"].values]
    repeated = _repeated(names)
    if repeated:
        raise BandError(f"{what}: band names must be unique; {repeated} repeat in {names}")


def check_unique_times(da: xr.DataArray, what: str) -> None:
    """Raise :class:`InputError` when the cube's ``time`` coordinate repeats a time.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> cube = xr.DataArray(np.zeros(2), dims="time",
    ...                     coords={"time": pd.to_datetime(["2020-01-01", "2020-01-01"])})
    >>> check_unique_times(cube, "lags")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xfusion.errors.InputError: lags: times must be unique; 2020-01-01T00:00:00 occurs 2 times ...
    """
    if "time" not in da.coords or da["time"].ndim != 1:
        return
    index = pd.Index(da["time"].values)
    if index.is_unique:
        return
    counts = index.value_counts(sort=False)
    repeated = counts[counts > 1]
    shown = ", ".join(f"{_iso(t)} occurs {c} times" for t, c in list(repeated.items())[:5])
    raise InputError(
        f"{what}: times must be unique; {shown} (of {index.size} images); expected one "
        "image per time: mosaic or composite the images of a date first"
    )


def declared_nodata(da: xr.DataArray) -> tuple[str, Any] | None:
    """Return ``(where, value)`` of the nodata value a cube declares, or None.

    ``where`` is e.g. ``"attrs['_FillValue']"``; NaN fill values do not count.
    """
    for source, mapping in (("attrs", da.attrs), ("encoding", da.encoding)):
        for key in _NODATA_KEYS:
            value = mapping.get(key)
            if value is not None and not (np.ndim(value) == 0 and np.isnan(float(value))):
                return f"{source}[{key!r}]", value
    return None


def check_float_nodata(da: xr.DataArray, what: str) -> None:
    """Refuse an integer cube that declares a nodata value (``_FillValue``, ``nodata`` ...).

    xfusion marks missing data with NaN, which needs a float cube; an integer cube read without
    masking (e.g. ``rioxarray.open_rasterio`` without ``masked=True``) carries its fill value as
    if it were data, and averages, composites and statistics would silently include it.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.zeros((1, 2, 2), "int16"), dims=("band", "y", "x"),
    ...                     attrs={"_FillValue": -9999})
    >>> check_float_nodata(cube, "composite")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xfusion.errors.InputError: composite needs a float cube with NaN for nodata; got int16 ...
    """
    if da.dtype.kind not in "iub":
        return
    found = declared_nodata(da)
    if found is None:
        return
    where, value = found
    raise InputError(
        f"{what} needs a float cube with NaN for nodata; got {da.dtype} with nodata {value!r} "
        f"({where}), which would be treated as data: convert it first, e.g. "
        f"cube.where(cube != {value!r}).astype('float32'), or open it with xf.open_raster"
    )


def _iso(t: Any) -> str:
    if isinstance(t, pd.Timestamp):
        return t.isoformat()
    return str(t)
