"""Argument checks shared by every layer of xfusion: one rule per argument, checked early.

The openers (:func:`xfusion.open_stac`, :func:`xfusion.open_raster`, :func:`xfusion.open_ee`),
:func:`xfusion.resample`, the preprocessing functions, the models and the recipes check their
arguments here, before any work, so that a mistake reads the same wherever it is made:

- :func:`normalize_chunks`: the one grammar of ``chunks=`` (an int, ``(y, x)``, a tuple with one
  entry per dim, a dict by dim name, ``"auto"`` or None);
- :func:`require_bands`: every named band is in the cube (``band 'QA60' not in cube; bands are
  [...]``);
- :func:`check_halo`: the halo of blockwise spatial prediction (a whole number of pixels, a
  multiple of the network's tile multiple), checked by the U-Nets before training and used by
  :func:`xfusion.models.predict`;
- :func:`check_unique_bands`, :func:`check_unique_times`, :func:`check_float_nodata` and
  :func:`declared_nodata`: cheap checks of a cube's metadata.

Every check reads dims, dtypes, coordinates and attributes only, never pixel values, so it runs
in lazy functions without computing anything. Each raises the most specific
:mod:`xfusion.errors` class with a message naming the bad value and what was expected. This
module sits at the base of the package: it imports only numpy, xarray and :mod:`xfusion.errors`.
"""

from __future__ import annotations

import difflib
import numbers
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xfusion.errors import BandError, InputError

__all__ = [
    "check_float_nodata",
    "check_halo",
    "check_unique_bands",
    "check_unique_times",
    "declared_nodata",
    "normalize_chunks",
    "require_bands",
]

_NODATA_KEYS = ("_FillValue", "nodata", "missing_value")
_SPATIAL = ("y", "x")


# --- chunks ----------------------------------------------------------------------------------


def normalize_chunks(chunks: Any, dims: Sequence[str], what: str = "chunks") -> dict[str, int]:
    """Return ``chunks`` as ``{dim: size}`` for the dims it sets; the one grammar of ``chunks=``.

    Accepted forms:

    - ``None`` or ``"auto"``: nothing set, the function's default chunking (``{}``);
    - an int: the spatial chunk, for both ``y`` and ``x``;
    - a tuple or list ``(y, x)``, or one entry per dim of ``dims`` in that order;
    - a mapping by dim name (only names of ``dims``; the others keep their default).

    Each size is a positive int, ``-1`` or ``None`` for the whole dim (returned as ``-1``), or
    ``"auto"`` for the function's default along that dim (left out of the result). Sizes may be
    numpy integers or integral floats (``512.0``, as some config formats write them).

    Parameters
    ----------
    chunks : int, tuple, list, mapping, str or None
        The user's ``chunks=`` argument.
    dims : sequence of str
        The dims the caller chunks, in order, e.g. ``("time", "band", "y", "x")``.
    what : str, default "chunks"
        How the argument is named in error messages, e.g. ``"open_stac chunks"``.

    Returns
    -------
    dict of str to int
        The sizes set, by dim; ``-1`` means the whole dim.

    Raises
    ------
    InputError
        Another type, a tuple of another length, a mapping naming a dim not in ``dims``, or a
        size that is not a positive int, -1, None or "auto". The message names ``what``, the
        value and the accepted forms.

    Examples
    --------
    >>> dims = ("time", "band", "y", "x")
    >>> normalize_chunks(256, dims)
    {'y': 256, 'x': 256}
    >>> normalize_chunks((256, 512), dims)
    {'y': 256, 'x': 512}
    >>> normalize_chunks({"time": None, "x": "auto", "y": 128}, dims)
    {'time': -1, 'y': 128}
    >>> normalize_chunks("auto", dims), normalize_chunks(None, dims)
    ({}, {})
    >>> normalize_chunks((1, 2, 3), dims, "open_stac chunks")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xfusion.errors.InputError: open_stac chunks must be an int (the y and x chunk), (y, x), ...
    """
    dims = tuple(str(d) for d in dims)
    if chunks is None or (isinstance(chunks, str) and chunks == "auto"):
        return {}
    if _is_size(chunks):
        items = [(d, chunks) for d in _SPATIAL if d in dims]
    elif isinstance(chunks, Mapping):
        unknown = sorted(str(k) for k in chunks if k not in dims)
        if unknown:
            raise InputError(f"{what} names unknown dims {unknown}; dims are {list(dims)}")
        items = list(chunks.items())
    elif isinstance(chunks, tuple | list) and (
        len(chunks) == len(dims) or (len(chunks) == 2 and dims[-2:] == _SPATIAL)
    ):
        items = list(zip(dims[-len(chunks) :], chunks, strict=True))
    else:
        raise InputError(f"{what} must be {_forms(dims)}; got {chunks!r}")
    out: dict[str, int] = {}
    for dim, size in items:
        if isinstance(size, str) and size == "auto":
            continue
        out[str(dim)] = _size(size, dim, what)
    return out


def _forms(dims: tuple[str, ...]) -> str:
    tuple_form = "(y, x)" if dims == _SPATIAL else f"(y, x), a tuple {dims}"
    return (
        f"an int (the y and x chunk), {tuple_form}, a dict by dim name (dims are {list(dims)}), "
        "'auto' or None; sizes are positive ints, -1 or None for the whole dim, or 'auto'"
    )


def _is_size(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _size(size: Any, dim: Hashable, what: str) -> int:
    if size is None:
        return -1
    if _is_size(size) and float(size).is_integer() and (size == -1 or size >= 1):
        return int(size)
    raise InputError(
        f"{what}: the chunk size for {dim!r} must be a positive int, -1 or None (the whole dim) "
        f"or 'auto'; got {size!r}"
    )


# --- bands -----------------------------------------------------------------------------------


def require_bands(
    cube: xr.DataArray | Iterable[Any],
    bands: Any,
    what: str = "cube",
    *,
    role: str = "",
    by: str = "",
) -> list[str]:
    """Raise :class:`~xfusion.errors.BandError` unless ``cube`` has every band of ``bands``.

    The one "band not in cube" check of xfusion: every layer that looks a band up by name
    (openers, preprocessing, models, plots, recipes) calls it, so the error reads the same
    everywhere: ``[<by> names ][<role> ]band 'x' not in <what>; bands are [...]`` for one
    missing band, ``bands [...]`` for several, followed by ``; did you mean 'X'?`` when a
    band of the cube is a close match (a typo or another case).

    Parameters
    ----------
    cube : xarray.DataArray or iterable of str
        A cube with a ``band`` coordinate, or the band names themselves (the columns of a
        pixel table, the bands of a metadata listing).
    bands : str or iterable of str
        The band names needed (a mapping: its keys).
    what : str, default "cube"
        How the cube is named in the message, e.g. ``"Landsat cube"``.
    role : str, optional
        What the bands are for, put before "band" in the message, e.g. ``"quality"``.
    by : str, optional
        The argument that names the bands, e.g. ``"kinds"`` (``kinds names band 'x' not in
        cube``).

    Returns
    -------
    list of str
        The cube's band names.

    Raises
    ------
    BandError
        A band is missing (the message names the missing bands, the cube's bands and, where
        one is close, the band probably meant), or the cube has no ``band`` coordinate.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.zeros((2, 1, 1)), dims=("band", "y", "x"),
    ...                     coords={"band": ["a", "b"]})
    >>> require_bands(cube, ["a", "b"])
    ['a', 'b']
    >>> require_bands(cube, ["a", "c", "d"], "test cube")
    Traceback (most recent call last):
    ...
    xfusion.errors.BandError: bands ['c', 'd'] not in test cube; bands are ['a', 'b']
    >>> require_bands(cube, "QA60", role="quality")
    Traceback (most recent call last):
    ...
    xfusion.errors.BandError: quality band 'QA60' not in cube; bands are ['a', 'b']
    >>> require_bands(["B02", "B08", "QA60"], {"B8": "flags"}, by="kinds")
    Traceback (most recent call last):
    ...
    xfusion.errors.BandError: kinds names band 'B8' not in cube; ...; did you mean 'B08'?
    """
    wanted = [bands] if isinstance(bands, str) else list(bands)
    prefix = (f"{by} names " if by else "") + (f"{role} " if role else "")
    if isinstance(cube, xr.DataArray):
        if "band" not in cube.coords or cube["band"].ndim != 1:
            raise BandError(
                f"{prefix}band(s) {wanted} asked of a {what} without a band coordinate; "
                f"its dims are {list(cube.dims)}"
            )
        names = cube["band"].values.tolist()  # a coordinate: metadata, not pixel values
    else:
        names = list(cube)
    have = [str(b) for b in names]
    missing = [b for b in wanted if str(b) not in have]
    if not missing:
        return have
    named = f"band {missing[0]!r}" if len(missing) == 1 else f"bands {missing}"
    hint = _did_you_mean(missing, have)
    raise BandError(f"{prefix}{named} not in {what}; bands are {have}{hint}")


def _did_you_mean(missing: list[Any], have: list[str]) -> str:
    """``"; did you mean 'B08'?"``: the cube's bands closest to the missing names, if any."""
    lowered = {b.lower(): b for b in reversed(have)}
    hints = []
    for name in missing:
        close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
        if close:
            hints.append((name, lowered[close[0]]))
    if not hints:
        return ""
    if len(missing) == 1:
        return f"; did you mean {hints[0][1]!r}?"
    return "; did you mean " + ", ".join(f"{b!r} for {m!r}" for m, b in hints) + "?"


def _repeated(values: Any) -> list[Hashable]:
    counts = Counter(values)
    return [v for v, c in counts.items() if c > 1]


def check_unique_bands(da: xr.DataArray, what: str) -> None:
    """Raise :class:`~xfusion.errors.BandError` when the cube's ``band`` coordinate repeats a name.

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
    """Raise :class:`~xfusion.errors.InputError` when the cube's ``time`` coordinate repeats a time.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.zeros(2), dims="time",
    ...                     coords={"time": np.array(["2020-01-01", "2020-01-01"], "M8[ns]")})
    >>> check_unique_times(cube, "lags")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    xfusion.errors.InputError: lags: times must be unique; 2020-01-01T00:00:00 occurs 2 times ...
    """
    if "time" not in da.coords or da["time"].ndim != 1:
        return
    index = da["time"].to_index()
    if index.is_unique:
        return
    counts = index.value_counts(sort=False)
    repeated = counts[counts > 1]
    shown = ", ".join(f"{_iso(t)} occurs {c} times" for t, c in list(repeated.items())[:5])
    raise InputError(
        f"{what}: times must be unique; {shown} (of {index.size} images); expected one "
        "image per time: mosaic or composite the images of a date first"
    )


def _iso(t: Any) -> str:
    isoformat = getattr(t, "isoformat", None)
    return isoformat() if callable(isoformat) else str(t)


# --- nodata ----------------------------------------------------------------------------------


def declared_nodata(da: xr.DataArray) -> tuple[str, Any] | None:
    """Return ``(where, value)`` of the nodata value a cube declares, or None.

    ``where`` is e.g. ``"attrs['_FillValue']"``; NaN fill values do not count.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> declared_nodata(xr.DataArray(np.zeros(2, "int16"), attrs={"nodata": 0}))
    ("attrs['nodata']", 0)
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


# --- halo ------------------------------------------------------------------------------------


def check_halo(
    halo: Any,
    multiple: int = 1,
    what: str = "halo",
    *,
    shape: tuple[int, int] | None = None,
    round_up: bool = False,
) -> int:
    """Return ``halo`` checked: the one halo rule of blockwise spatial prediction.

    A halo is the context, in pixels, read around each block: a whole number ``>= 0``, at most
    the cube's shorter side, and a multiple of the model's tile multiple (``2**depth`` for a
    U-Net, so that the halo-padded blocks still divide into the network's levels). A U-Net
    refuses another halo when it is built into the model (in ``fit``, before any training
    step); :func:`xfusion.models.predict` passes ``round_up=True`` and reads the next multiple.

    Parameters
    ----------
    halo : int
        The halo in pixels (numpy integers and integral floats are accepted).
    multiple : int, default 1
        The model's tile multiple.
    what : str, default "halo"
        How the argument is named in the message.
    shape : (int, int), optional
        The cube's ``(y, x)`` size: a larger halo is refused.
    round_up : bool, default False
        Round a halo that is not a multiple up to the next multiple instead of refusing it.

    Returns
    -------
    int

    Raises
    ------
    InputError
        ``halo`` is not a whole number, negative, larger than ``shape`` or (without
        ``round_up``) not a multiple of ``multiple``.

    Examples
    --------
    >>> check_halo(32, 8), check_halo(5, 4, round_up=True), check_halo(0, 16)
    (32, 8, 0)
    >>> check_halo(20, 8)
    Traceback (most recent call last):
    ...
    xfusion.errors.InputError: halo must be a multiple of 8 (2**depth); got 20, e.g. 24
    """
    if not _is_size(halo) or not float(halo).is_integer():
        raise InputError(f"{what} must be a whole number of pixels >= 0; got {halo!r}")
    value = int(halo)
    if shape is not None and value > min(shape):
        ny, nx = shape
        raise InputError(
            f"{what}={value} px is larger than the cube ({ny}×{nx} px); "
            f"expected at most {min(ny, nx)} px of context around a block"
        )
    if value < 0:
        raise InputError(f"{what} must be >= 0 pixels; got {halo!r}")
    multiple = max(int(multiple), 1)
    rounded = -(-value // multiple) * multiple
    if rounded != value and not round_up:
        raise InputError(
            f"{what} must be a multiple of {multiple} (2**depth); got {halo!r}, e.g. {rounded}"
        )
    return rounded
