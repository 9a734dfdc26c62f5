"""Standardisation and spectral indices.

Both functions are lazy: statistics are Dask reductions that run when the result is computed,
and indices are per-pixel arithmetic on the bands they need.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xfusion.bands import band_kinds, band_scaling
from xfusion.errors import BandError, InputError
from xfusion.validate import check_float_nodata, check_unique_bands, require_bands

__all__ = ["BAND_ALIASES", "INDICES", "index", "standardize"]


# --------------------------------------------------------------------------------------------
# standardisation


def _reduce_dims(da: xr.DataArray) -> list[Hashable]:
    return [d for d in da.dims if d != "band"]


def _float_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _is_cube(value: Any) -> bool:
    """Whether ``value`` is a cube to take statistics from (has dims other than ``band``)."""
    return isinstance(value, xr.DataArray) and any(d != "band" for d in value.dims)


def _cube_stat(cube: xr.DataArray, which: str) -> xr.DataArray:
    """Lazy per-band mean or (population) standard deviation over every other dimension."""
    data = cube.astype(np.float64)
    dims = _reduce_dims(cube)
    stat = data.mean(dims, skipna=True) if which == "mean" else data.std(dims, skipna=True, ddof=0)
    return stat.reset_coords(drop=True)


def _band_list(da: xr.DataArray) -> list[Hashable]:
    return da["band"].values.tolist() if "band" in da.dims else []


def _given_stat(da: xr.DataArray, value: Any, which: str) -> Any:
    """Turn a user-given statistic (number, mapping by band, band-indexed DataArray) into values."""
    bands = _band_list(da)
    if isinstance(value, Mapping):
        if "band" not in da.dims:
            raise InputError(f"{which} given by band, but the cube has no 'band' dimension")
        missing = [b for b in bands if b not in value]
        if missing:
            raise BandError(
                f"{which} has no value for bands {missing}; cube bands are {bands}, "
                f"{which} names {list(value)}"
            )
        values = np.array([value[b] for b in bands], dtype=np.float64)
        if which == "std" and not np.all(values > 0):
            given = dict(zip(bands, values.tolist(), strict=True))
            raise InputError(f"std must be positive for every band; got {given}")
        return xr.DataArray(values, dims="band", coords={"band": bands})
    if isinstance(value, xr.DataArray):
        if value.ndim == 0:
            return value.reset_coords(drop=True)
        if "band" not in da.dims:
            raise InputError(f"{which} is indexed by band, but the cube has no 'band' dimension")
        given = value["band"].values.tolist()
        missing = [b for b in bands if b not in given]
        if missing:
            raise BandError(f"{which} has no value for bands {missing}; it has bands {given}")
        return value.reset_coords(drop=True).sel(band=bands)
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        if which == "std" and not value > 0:
            raise InputError(f"std must be positive; got {value!r}")
        return float(value)
    raise InputError(
        f"{which} must be None, a number, a mapping band -> number, a band-indexed DataArray or "
        f"a cube to take statistics from; got {type(value).__name__}"
    )


def _statistic(da: xr.DataArray, value: Any, other: Any, which: str) -> Any:
    if value is None:
        reference = other if _is_cube(other) else da
        return _cube_stat(_check_reference(da, reference, which), which)
    if _is_cube(value):
        return _cube_stat(_check_reference(da, value, which), which)
    return _given_stat(da, value, which)


def _check_reference(da: xr.DataArray, ref: xr.DataArray, which: str) -> xr.DataArray:
    if ref is da:
        return da
    if ("band" in da.dims) != ("band" in ref.dims):
        raise InputError(
            f"the cube for {which} must have a 'band' dimension exactly when the data has one; "
            f"dims are {ref.dims} and {da.dims}"
        )
    if "band" in da.dims:
        bands, ref_bands = _band_list(da), _band_list(ref)
        require_bands(ref_bands, bands, f"the cube for {which}")
        return ref.sel(band=bands)
    return ref


def standardize(da: xr.DataArray, mean: Any = None, std: Any = None) -> xr.DataArray:
    """Standardise each band: ``(da - mean) / std``.

    The statistics are per band, over every other dimension (``y``, ``x`` and ``time`` when
    present), skipping NaN. They come from the cube itself, or from a reference: another cube
    (e.g. standardise 2019 with the statistics of 2015), numbers, mappings band -> number, or
    band-indexed DataArrays. Statistics of a cube are lazy reductions: nothing is computed until
    the result is.

    Parameters
    ----------
    da : xarray.DataArray
        Cube to standardise (``band`` dimension optional: without it the statistics are scalar).
    mean, std : optional
        ``None`` takes the statistic from the reference cube: the other argument if that is a
        cube, otherwise ``da`` itself. A cube (a DataArray with dimensions other than ``band``)
        gives its own statistic. A number, a mapping band -> number, or a DataArray indexed by
        ``band`` gives the values directly. The standard deviation is the population one
        (``ddof=0``).

    Returns
    -------
    xarray.DataArray
        Floating-point cube (``float32`` unless ``da`` is ``float64``), chunked like ``da``.
        A band whose computed standard deviation is 0 is only centred (divided by 1, as
        scikit-learn's ``StandardScaler`` does); NaN stays NaN.

    Raises
    ------
    BandError
        A mapping, DataArray or reference cube lacks one of ``da``'s bands, or band names repeat.
    InputError
        A given standard deviation is not positive, an argument has an unusable type, or ``da``
        is an integer cube that declares a nodata value (``_FillValue``/``nodata`` attribute),
        which would be counted in the statistics (convert it to float with NaN first).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.array([[1.0, 3.0], [10.0, 30.0]], dtype="float32"),
    ...                   dims=("band", "x"), coords={"band": ["a", "b"]})
    >>> standardize(da).values
    array([[-1.,  1.],
           [-1.,  1.]], dtype=float32)
    >>> standardize(da, mean={"a": 0, "b": 10}, std=2).values
    array([[ 0.5,  1.5],
           [ 0. , 10. ]], dtype=float32)
    """
    if not isinstance(da, xr.DataArray):
        raise InputError(f"standardize expects an xarray.DataArray cube; got {type(da).__name__}")
    check_unique_bands(da, "standardize")
    check_float_nodata(da, "standardize")
    mean_v = _statistic(da, mean, std, "mean")
    std_v = _statistic(da, std, mean, "std")
    if isinstance(std_v, xr.DataArray):
        # A constant band carries no information: centre it, do not divide by zero.
        std_v = std_v.where(std_v != 0, 1.0)
    out = ((da - mean_v) / std_v).astype(_float_dtype(da.dtype))
    out.attrs = da.attrs
    return out


# --------------------------------------------------------------------------------------------
# spectral indices

#: Band names recognised for each common name, in order of preference: plain names,
#: STAC ``eo:common_name``-style names, Sentinel-2 and Landsat 8/9 Collection-2 Level-2.
BAND_ALIASES: dict[str, tuple[str, ...]] = {
    "blue": ("blue", "B2", "B02", "SR_B2"),
    "green": ("green", "B3", "B03", "SR_B3"),
    "red": ("red", "B4", "B04", "SR_B4"),
    "nir": ("nir", "nir08", "B8", "B08", "SR_B5"),
    "swir1": ("swir1", "swir16", "B11", "SR_B6"),
    "swir2": ("swir2", "swir22", "B12", "SR_B7"),
}


def _normalized_difference(a: xr.DataArray, b: xr.DataArray) -> xr.DataArray:
    total = a + b
    # Dividing by NaN instead of 0 keeps the result NaN without a RuntimeWarning.
    return (a - b) / total.where(total != 0)


def _nirv(b: Mapping[str, xr.DataArray]) -> xr.DataArray:
    return _normalized_difference(b["nir"], b["red"]) * b["nir"]


#: Index name -> (common band names it needs, formula on those bands).
INDICES: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, xr.DataArray]], xr.DataArray]]] = {
    "NDVI": (("nir", "red"), lambda b: _normalized_difference(b["nir"], b["red"])),
    "NDWI": (("green", "nir"), lambda b: _normalized_difference(b["green"], b["nir"])),
    "MNDWI": (("green", "swir1"), lambda b: _normalized_difference(b["green"], b["swir1"])),
    "NDBI": (("swir1", "nir"), lambda b: _normalized_difference(b["swir1"], b["nir"])),
    "NIRv": (("nir", "red"), _nirv),
}


def _find_band(bands: list[Hashable], common: str, index_name: str) -> Hashable:
    aliases = BAND_ALIASES[common]
    names = {b: str(b) for b in bands}
    for alias in aliases:  # exact names first
        if alias in names.values():
            return next(b for b, s in names.items() if s == alias)
    lowered = {a.lower() for a in aliases}
    matches = [b for b, s in names.items() if s.lower() in lowered]
    if not matches:  # fused cubes name bands "source:band"
        matches = [b for b, s in names.items() if s.rsplit(":", 1)[-1].lower() in lowered]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise BandError(
            f"{index_name} needs one {common} band but several match: {matches}; "
            "select the bands of one source first"
        )
    raise BandError(
        f"{index_name} needs a {common} band (one of {list(aliases)}); bands are {bands}"
    )


def _check_index_bands(da: xr.DataArray, used: Mapping[str, Hashable], index_name: str) -> None:
    """Refuse bands whose kind or recorded scaling makes the index meaningless (metadata only)."""
    kinds = band_kinds(da)
    for common, band in used.items():
        if kinds.get(band, "continuous") != "continuous":
            raise BandError(
                f"{index_name} needs a continuous {common} band (a reflectance); band {band!r} is "
                f"a {kinds[band]} band (see xfusion.bands)"
            )
    scaling = band_scaling(da)
    known = {b: scaling.get(b) for b in used.values() if scaling.get(b) is not None}
    if len(set(known.values())) > 1:
        given = ", ".join(f"{b!r}: scale {p[0]:g}, offset {p[1]:g}" for b, p in known.items())
        raise InputError(
            f"{index_name} mixes bands on different scales ({given}); scale them alike first "
            "(e.g. .xf.scale(...) on the raw ones)"
        )
    for band, pair in known.items():
        # Collection-2 Level-2 reflectance has an offset: an index of its raw DN is not the index.
        if pair == (1.0, 0.0) and str(band).rsplit(":", 1)[-1].startswith("SR_B"):
            raise InputError(
                f"{index_name}: band {band!r} holds raw Landsat Collection-2 digital numbers "
                "(band_scale 1, band_offset 0), whose physical scaling has an offset (-0.2), so "
                "the index of raw numbers is wrong; apply .xf.scale('LANDSAT_C2_SR') first"
            )


def index(da: xr.DataArray, name: str | Sequence[str]) -> xr.DataArray:
    """Compute spectral indices from a cube's bands, by name.

    Bands are found by their common names (``blue``, ``green``, ``red``, ``nir``, ``swir1``,
    ``swir2``) through :data:`BAND_ALIASES`: plain names, Sentinel-2 (``B4``/``B04``,
    ``B8``/``B08``, ``B11`` ...), Landsat 8/9 Collection-2 (``SR_B4``, ``SR_B5``, ``SR_B6`` ...),
    also inside fused names such as ``"s2:B08"``.

    ========= ===================================== =================
    name      formula                               bands
    ========= ===================================== =================
    ``NDVI``  (nir − red) / (nir + red)             nir, red
    ``NDWI``  (green − nir) / (green + nir)         green, nir
    ``MNDWI`` (green − swir1) / (green + swir1)     green, swir1
    ``NDBI``  (swir1 − nir) / (swir1 + nir)         swir1, nir
    ``NIRv``  NDVI × nir                            nir, red
    ========= ===================================== =================

    Parameters
    ----------
    da : xarray.DataArray
        Cube with a ``band`` dimension (reflectances; ``time`` optional).
    name : str or sequence of str
        Index name(s), case-insensitive.

    Returns
    -------
    xarray.DataArray
        A cube with the same dimensions as ``da`` and ``band`` holding the index names
        (canonical spelling, e.g. ``"NDVI"``), so it can be concatenated to ``da``. Floating
        point (``float32`` unless ``da`` is ``float64``); NaN where the denominator is 0.

    Raises
    ------
    BandError
        A band the index needs is missing (the message lists the cube's bands) or ambiguous, or
        band names repeat.
    InputError
        Unknown index name, or ``da`` has no ``band`` dimension; or the bands' recorded scaling
        (the ``band_scale``/``band_offset`` coordinates, see :mod:`xfusion.bands`) makes the index
        wrong: bands on different scales, or raw Landsat Collection-2 ``SR_B*`` numbers (their
        scaling has an offset, so a ratio of raw numbers is not the index). A band whose
        ``band_kind`` is not continuous (a QA or class band) is a :class:`BandError`.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.array([[0.1, 0.2], [0.5, 0.2]], dtype="float32"),
    ...                     dims=("band", "x"), coords={"band": ["B04", "B08"]})
    >>> ndvi = index(cube, "ndvi")
    >>> ndvi.band.values.tolist(), ndvi.values.round(3).tolist()
    (['NDVI'], [[0.667, 0.0]])
    """
    if not isinstance(da, xr.DataArray):
        raise InputError(f"index expects an xarray.DataArray cube; got {type(da).__name__}")
    if "band" not in da.dims:
        raise InputError(f"index needs a 'band' dimension; cube dims are {da.dims}")
    check_unique_bands(da, "index")
    names = [name] if isinstance(name, str) else list(name)
    if not names:
        raise InputError("index needs at least one index name")
    canonical = {k.lower(): k for k in INDICES}
    resolved = []
    for n in names:
        if not isinstance(n, str) or n.lower() not in canonical:
            raise InputError(f"unknown index {n!r}; available indices are {list(INDICES)}")
        resolved.append(canonical[n.lower()])

    bands = _band_list(da)
    # per-band coordinates (e.g. common_name, source) do not describe an index
    per_band = [c for c in da.coords if c != "band" and "band" in da[c].dims]
    clean = da.drop_vars(per_band)
    dtype = _float_dtype(da.dtype)
    results = []
    for index_name in resolved:
        needs, formula = INDICES[index_name]
        used = {common: _find_band(bands, common, index_name) for common in needs}
        _check_index_bands(da, used, index_name)
        selected = {
            common: clean.sel(band=band, drop=True).astype(dtype) for common, band in used.items()
        }
        values = formula(selected).astype(dtype)
        results.append(values.expand_dims(band=[index_name]))
    out = xr.concat(results, dim="band") if len(results) > 1 else results[0]
    out = out.transpose(*da.dims)
    out.name = None
    return out
