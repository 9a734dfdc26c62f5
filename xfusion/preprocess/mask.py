"""Cloud and validity masks, scaling and mask dilation.

Every function here is lazy: on a Dask-backed cube it only adds tasks to the graph, and the
result is chunked like the input (an eager cube gives an eager result). Masked values become NaN,
so the output of a mask is always floating point (``float32`` unless the input was ``float64``).
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import dask.array as dsa
import numpy as np
import xarray as xr

from xfusion._kernels.morphology import binary_dilate_disk
from xfusion.bands import (
    KIND_COORD,
    SCALE_COORD,
    band_kinds,
    band_scaling,
    is_physical_scaling,
    set_band_scaling,
)
from xfusion.errors import BandError, InputError, ScaleError, XFusionWarning
from xfusion.validate import check_unique_bands, require_bands

__all__ = [
    "CLASS_PRESETS",
    "QA_PRESETS",
    "SCALE_PRESETS",
    "QAPreset",
    "dilate",
    "flags_set",
    "mask_bits",
    "mask_classes",
    "mask_range",
    "scale",
]

T_Xarray = TypeVar("T_Xarray", xr.DataArray, xr.Dataset)


@dataclass(frozen=True)
class QAPreset:
    """A named quality band and the bit positions (or class values) that mark a pixel invalid.

    Attributes
    ----------
    band : str
        The usual name of the quality band in the product.
    values : tuple of int
        Bit positions (for :func:`mask_bits`) or class values (for :func:`mask_classes`).
    description : str
        What each bit or class means.
    """

    band: str
    values: tuple[int, ...]
    description: str


#: Bit presets for :func:`mask_bits`; a name ending in ``_SNOW`` also masks snow/ice.
QA_PRESETS: dict[str, QAPreset] = {
    "QA60": QAPreset(
        "QA60", (10, 11), "Sentinel-2 L1C/L2A QA60: bit 10 opaque clouds, bit 11 cirrus clouds"
    ),
    "QA_PIXEL": QAPreset(
        "QA_PIXEL",
        (0, 1, 2, 3, 4),
        "Landsat Collection-2 QA_PIXEL: bit 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, "
        "4 cloud shadow (5 snow, 6 clear, 7 water are not masked)",
    ),
    "QA_PIXEL_SNOW": QAPreset(
        "QA_PIXEL",
        (0, 1, 2, 3, 4, 5),
        "Landsat Collection-2 QA_PIXEL: bits 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, "
        "4 cloud shadow, 5 snow",
    ),
    "BQA": QAPreset(
        "BQA",
        (0, 4, 8, 12),
        "Landsat Collection-1 BQA: bit 0 designated fill, 4 cloud, 8 cloud-shadow confidence "
        "medium/high, 12 cirrus confidence medium/high",
    ),
    "BQA_SNOW": QAPreset(
        "BQA",
        (0, 4, 8, 10, 12),
        "Landsat Collection-1 BQA: bit 0 designated fill, 4 cloud, 8 cloud-shadow confidence "
        "medium/high, 10 snow/ice confidence medium/high, 12 cirrus confidence medium/high",
    ),
}

#: Class presets for :func:`mask_classes`; a name ending in ``_SNOW`` also masks snow/ice.
CLASS_PRESETS: dict[str, QAPreset] = {
    "SCL": QAPreset(
        "SCL",
        (3, 8, 9, 10),
        "Sentinel-2 L2A scene classification: 3 cloud shadow, 8 cloud medium probability, "
        "9 cloud high probability, 10 thin cirrus",
    ),
    "SCL_SNOW": QAPreset(
        "SCL",
        (3, 8, 9, 10, 11),
        "Sentinel-2 L2A scene classification: 3 cloud shadow, 8/9 cloud medium/high probability, "
        "10 thin cirrus, 11 snow/ice",
    ),
}

#: ``(factor, offset)`` presets for :func:`scale`.
SCALE_PRESETS: dict[str, tuple[float, float]] = {
    # Sentinel-2 L1C/L2A reflectance stored as integers times 10000.
    "S2": (1e-4, 0.0),
    # Landsat Collection-2 Level-2 surface reflectance.
    "LANDSAT_C2_SR": (2.75e-5, -0.2),
    # Landsat Collection-2 Level-2 surface temperature, in kelvin.
    "LANDSAT_C2_ST": (0.00341802, 149.0),
    # The same, converted to degrees Celsius.
    "LANDSAT_C2_ST_CELSIUS": (0.00341802, 149.0 - 273.15),
}


# --------------------------------------------------------------------------------------------
# helpers


def _require_dataarray(obj: Any, func: str) -> xr.DataArray:
    if not isinstance(obj, xr.DataArray):
        raise InputError(f"{func} expects an xarray.DataArray cube; got {type(obj).__name__}")
    return obj


def _band_names(da: xr.DataArray, func: str) -> list[Hashable]:
    if "band" not in da.dims:
        raise InputError(f"{func} needs a 'band' dimension; cube dims are {da.dims}")
    check_unique_bands(da, func)
    return da["band"].values.tolist()


def _float_dtype(dtype: np.dtype) -> np.dtype:
    """Return the floating dtype holding ``dtype``'s values and NaN (float32 unless float64)."""
    dtype = np.dtype(dtype)
    return dtype if dtype == np.float64 else np.dtype(np.float32)


def _as_float(da: xr.DataArray) -> xr.DataArray:
    target = _float_dtype(da.dtype)
    return da if da.dtype == target else da.astype(target)


def _resolve_qa(da: xr.DataArray, qa: Any, presets: Mapping[str, QAPreset], func: str) -> Hashable:
    bands = _band_names(da, func)
    if qa in bands:
        return qa
    if isinstance(qa, str) and qa in presets:
        wanted = presets[qa].band
        if wanted in bands:
            return wanted
        # The product's band under a STAC asset key: "qa_pixel", "QA_PIXEL.TIF", "s2:QA60".
        matches = [b for b in bands if _plain_name(b) == wanted]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise BandError(
                f"preset {qa!r} matches several bands {matches}; name the quality band itself"
            )
    have = require_bands(bands, [qa], role="quality")  # raises unless qa names a band as a str
    return bands[have.index(str(qa))]


def _plain_name(band: Hashable) -> str:
    """``"s2:qa_pixel.TIF"`` -> ``"QA_PIXEL"``: a band name as the presets spell it."""
    return str(band).rsplit(":", 1)[-1].rsplit(".", 1)[0].upper()


def _resolve_values(values: Any, presets: Mapping[str, QAPreset], what: str) -> tuple[int, ...]:
    if isinstance(values, str):
        if values not in presets:
            raise InputError(f"unknown {what} preset {values!r}; presets are {sorted(presets)}")
        return presets[values].values
    if isinstance(values, int | np.integer):
        values = [values]
    try:
        items = list(values)
    except TypeError as err:
        raise InputError(
            f"{what} must be a preset name ({sorted(presets)}) or an iterable of integers; "
            f"got {values!r}"
        ) from err
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise InputError(f"{what} must be integers; got {v!r} in {items!r}")
        out.append(int(v))
    if not out:
        raise InputError(f"{what} is empty; give at least one value")
    return tuple(out)


def _check_qa_dtype(qa_da: xr.DataArray, name: Hashable) -> None:
    kind = qa_da.dtype.kind
    if kind not in "iuf":
        raise BandError(
            f"quality band {name!r} has dtype {qa_da.dtype}; expected integers "
            "(or floats holding integer values, NaN for nodata)"
        )


def _qa_as_int(block: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Integer view of a QA block and its validity; raises on non-integer or negative values."""
    if block.dtype.kind == "f":
        nodata = np.isnan(block)
        filled = np.where(nodata, 0, block)
        wrong = (filled != np.floor(filled)) | (filled < 0) | ~np.isfinite(filled)
        if wrong.any():
            bad = filled[wrong]
            raise BandError(
                f"quality band {name!r} holds non-integer or negative values "
                f"(e.g. {float(bad[0])!r}); expected non-negative integer flags (NaN for nodata)"
            )
        return filled.astype(np.int64), ~nodata
    return block.astype(np.int64), np.ones(block.shape, dtype=bool)


_MISSING = (None, "drop", "keep")


def _check_missing(missing: Any, func: str) -> None:
    if missing not in _MISSING:
        raise InputError(
            f"{func}: missing must be 'drop', 'keep' or None (drop and warn); got {missing!r}"
        )


def _bits_ok(ints: np.ndarray, *, bitmask: int) -> np.ndarray:
    return (ints & bitmask) == 0


def _classes_ok(ints: np.ndarray, *, classes: np.ndarray) -> np.ndarray:
    return ~np.isin(ints, classes)


def _valid_block(
    qa: np.ndarray,
    other: np.ndarray | None = None,
    *,
    ok: Any,
    name: str,
    func: str,
    missing: str | None,
    **params: Any,
) -> np.ndarray:
    """Return one block's validity: ``ok`` where the flag is known, NaN flags per ``missing``.

    ``other`` (only with ``missing=None``) says where the other bands hold data: a pixel dropped
    there for an unknown flag issues the warning that the default promises.
    """
    ints, known = _qa_as_int(qa, name)
    valid = ok(ints, **params)
    if missing == "keep":
        return np.where(known, valid, True)
    if missing is None and other is not None and (other & ~known).any():
        warnings.warn(
            f"{func}: quality band {name!r} is NaN (unknown: its nodata, an item without the "
            "quality asset, or an unreadable file) where other bands hold data; those pixels are "
            "dropped. Pass missing='drop' to drop them without this warning, or missing='keep' "
            "to keep them",
            XFusionWarning,
            stacklevel=2,
        )
    return valid & known


def _check_qa_kind(da: xr.DataArray, name: Hashable, func: str, wanted: tuple[str, ...]) -> None:
    """Refuse a quality band whose kind cannot be read as ``wanted`` (flags or classes)."""
    applied = band_scaling(da)[name]
    if is_physical_scaling(applied):
        raise BandError(
            f"{func}: quality band {name!r} was scaled (scale {applied[0]:g}, offset "
            f"{applied[1]:g} recorded in band_scale/band_offset), so its numbers are no longer "
            "its flags or classes; read it with its raw numbers (open_stac keeps flag and class "
            "bands raw; mark it with kinds=...)"
        )
    kind = band_kinds(da)[name]
    recorded = KIND_COORD in da.coords
    if kind in wanted or (kind == "continuous" and not recorded):
        return  # a band of unknown meaning (no band_kind coordinate) is the caller's to judge
    how = "recorded in its band_kind coordinate" if recorded else "known from its name"
    advice = (
        "use mask_classes for class labels"
        if func == "mask_bits" and kind == "categorical"
        else f"if it does hold {' or '.join(wanted)}, say so with "
        f"xfusion.bands.set_band_kinds(cube, {{{str(name)!r}: {wanted[0]!r}}}) "
        "(or open_stac(..., kinds=...))"
    )
    raise BandError(
        f"{func}: quality band {name!r} is {kind} ({how}); expected {' or '.join(wanted)}; {advice}"
    )


def _bitmask(da: xr.DataArray, qa: Any, bits: Any, func: str) -> tuple[Hashable, int]:
    """Resolve and check the quality band and bit positions; return the band and its bitmask."""
    qa_name = _resolve_qa(da, qa, QA_PRESETS, func)
    bit_list = _resolve_values(bits, QA_PRESETS, "bits")
    qa_dtype = da.dtype
    _check_qa_dtype(da, qa_name)
    _check_qa_kind(da, qa_name, func, ("flags",))
    max_bit = qa_dtype.itemsize * 8 - 1 if qa_dtype.kind in "iu" else 62
    if qa_dtype.kind == "i":
        max_bit -= 1  # the sign bit is not a flag
    bad = [b for b in bit_list if not 0 <= b <= max_bit]
    if bad:
        raise InputError(
            f"bits {bad} out of range for quality band {qa_name!r} of dtype {qa_dtype}; "
            f"expected bits between 0 and {max_bit}"
        )
    bitmask = 0
    for b in bit_list:
        bitmask |= 1 << b
    return qa_name, bitmask


def _apply_validity(
    da: xr.DataArray,
    qa_name: Hashable,
    drop: bool,
    missing: str | None,
    func: str,
    **kwargs: Any,
) -> xr.DataArray:
    qa_da = da.sel(band=qa_name, drop=True)
    args = [qa_da]
    others = [b for b in da["band"].values.tolist() if b != qa_name]
    if missing is None and others:
        args.append(da.sel(band=others).notnull().any("band"))
    valid = xr.apply_ufunc(
        _valid_block,
        *args,
        kwargs={"name": str(qa_name), "func": func, "missing": missing, **kwargs},
        dask="parallelized",
        output_dtypes=[bool],
    )
    data = _as_float(da)
    if drop:
        return data.drop_sel(band=[qa_name]).where(valid)
    # The quality band itself stays unmasked so it can still be inspected.
    return data.where(valid | (data["band"] == qa_name))


# --------------------------------------------------------------------------------------------
# public functions


def mask_bits(
    da: xr.DataArray, qa: Any, bits: Any, *, drop: bool = True, missing: str | None = None
) -> xr.DataArray:
    """Set a cube to NaN wherever any of ``bits`` is set in its quality band ``qa``.

    Where the quality band itself is NaN its flags are unknown (its nodata, an item without the
    quality asset, an unreadable file); ``missing`` decides. The quality band may be integer or
    floating point; a float band must hold integer values where it is not NaN, which is checked
    block by block when the result is computed (a :class:`~xfusion.errors.BandError` is raised
    then). A band recorded (``band_kind`` coordinate) or named as class labels is refused, and so
    is one recorded as continuous: bit tests on reflectance or class numbers mean nothing.

    Parameters
    ----------
    da : xarray.DataArray
        Cube with a ``band`` dimension (``time`` optional).
    qa : str
        Name of the quality band in ``da``, or a preset name from :data:`QA_PRESETS` whose band is
        in ``da`` (``"QA_PIXEL_SNOW"`` reads band ``"QA_PIXEL"``, or the one band spelt so up to
        case, a file extension or a source prefix: ``"qa_pixel"``, ``"QA_PIXEL.TIF"``).
    bits : str or iterable of int
        Bit positions (0 = least significant), or a preset name from :data:`QA_PRESETS`:
        ``"QA60"`` (Sentinel-2, bits 10 and 11), ``"QA_PIXEL"`` (Landsat C2, bits 0 fill and
        1-4), ``"QA_PIXEL_SNOW"`` (and bit 5), ``"BQA"`` (Landsat C1, bits 0 fill, 4, 8, 12),
        ``"BQA_SNOW"`` (and bit 10).
    drop : bool, default True
        Remove the quality band from the result. With ``drop=False`` it is kept unmasked.
    missing : {None, "drop", "keep"}, default None
        What to do where the quality band is NaN. ``"drop"``: mask the pixel (its quality is
        unknown, so it is not trusted). ``"keep"``: keep it (an item whose QA asset is missing
        keeps all its pixels, clouds included). ``None`` drops like ``"drop"`` but, when computed,
        issues an :class:`~xfusion.errors.XFusionWarning` if a NaN flag drops a pixel where other
        bands hold data. Dropping is the default because keeping would let cloudy pixels through
        silently, and the warning is there because dropping can silently remove whole scenes
        (a missing QA asset): a pixel lost without a word is what a careful user must not get.
        Pass ``"drop"`` or ``"keep"`` to make the choice explicit and silence the warning.

    Returns
    -------
    xarray.DataArray
        Floating-point cube (``float32`` unless ``da`` is ``float64``), chunked like ``da``.

    Raises
    ------
    BandError
        ``qa`` is not a band of ``da``, the quality band is not integer-valued, or its kind is
        categorical (or recorded as continuous).
    InputError
        ``bits`` is not a preset name or integers, a bit is out of range for the band's dtype, or
        ``missing`` is not one of the choices.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(
    ...     np.array([[[0.1, 0.2, 0.3]], [[0, 1024, 2048]]], dtype="float32"),
    ...     dims=("band", "y", "x"), coords={"band": ["B04", "QA60"]})
    >>> mask_bits(cube, "QA60", "QA60").values
    array([[[0.1, nan, nan]]], dtype=float32)
    >>> unknown = cube.where(cube.band != "QA60")  # flags NaN: e.g. an item without QA60
    >>> mask_bits(unknown, "QA60", "QA60", missing="keep").values
    array([[[0.1, 0.2, 0.3]]], dtype=float32)
    """
    da = _require_dataarray(da, "mask_bits")
    qa_name, bitmask = _bitmask(da, qa, bits, "mask_bits")
    _check_missing(missing, "mask_bits")
    return _apply_validity(da, qa_name, drop, missing, "mask_bits", ok=_bits_ok, bitmask=bitmask)


def flags_set(da: xr.DataArray, qa: Any, bits: Any) -> xr.DataArray:
    """Return where any of ``bits`` is set in the quality band ``qa``: a lazy boolean (y, x) map.

    The bit test of :func:`mask_bits`, with its checks (quality band name or preset, bit
    positions, integer flags, a band recorded as flags), as a map instead of a mask: e.g. the
    cloud score of each date. Where the quality band is NaN its flags are unknown and read as
    not set; combine with ``da.sel(band=qa).notnull()`` to tell those pixels apart.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(
    ...     np.array([[[0.1, 0.2, 0.3]], [[0, 1024, np.nan]]], dtype="float32"),
    ...     dims=("band", "y", "x"), coords={"band": ["B04", "QA60"]})
    >>> flags_set(cube, "QA60", "QA60").values
    array([[False,  True, False]])
    """
    da = _require_dataarray(da, "flags_set")
    qa_name, bitmask = _bitmask(da, qa, bits, "flags_set")
    known_ok = xr.apply_ufunc(
        _valid_block,
        da.sel(band=qa_name, drop=True),
        kwargs={"name": str(qa_name), "func": "flags_set", "missing": "keep", "ok": _bits_ok,
                "bitmask": bitmask},
        dask="parallelized",
        output_dtypes=[bool],
    )  # fmt: skip
    return ~known_ok


def mask_classes(
    da: xr.DataArray, qa: Any, classes: Any, *, drop: bool = True, missing: str | None = None
) -> xr.DataArray:
    """Set a cube to NaN wherever its classification band ``qa`` holds one of ``classes``.

    Like :func:`mask_bits` but for bands of class values (Sentinel-2 ``SCL``) instead of bit flags;
    a flag band is accepted too (masking exact flag values, as Landsat Collection-1 workflows
    do), a band recorded as continuous is refused.

    Parameters
    ----------
    da : xarray.DataArray
        Cube with a ``band`` dimension (``time`` optional).
    qa : str
        Name of the classification band in ``da``, or a preset name from :data:`CLASS_PRESETS`.
    classes : str or iterable of int
        Class values to mask, or a preset name: ``"SCL"`` (3 cloud shadow, 8 and 9 cloud medium
        and high probability, 10 thin cirrus) or ``"SCL_SNOW"`` (and 11 snow/ice).
    drop : bool, default True
        Remove the classification band from the result (kept unmasked with ``drop=False``).
    missing : {None, "drop", "keep"}, default None
        What to do where the class band is NaN (unknown class), as in :func:`mask_bits`:
        ``"drop"``, ``"keep"``, or ``None`` to drop with a warning when that drops pixels where
        other bands hold data.

    Returns
    -------
    xarray.DataArray
        Floating-point cube, chunked like ``da``.

    Raises
    ------
    BandError
        ``qa`` is not a band of ``da``, it is not integer-valued, or it is recorded as continuous.
    InputError
        ``classes`` is not a preset name or integers, or ``missing`` is not one of the choices.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(
    ...     np.array([[[0.1, 0.2, 0.3]], [[4, 9, 3]]], dtype="float32"),
    ...     dims=("band", "y", "x"), coords={"band": ["B04", "SCL"]})
    >>> mask_classes(cube, "SCL", "SCL").values
    array([[[0.1, nan, nan]]], dtype=float32)
    """
    da = _require_dataarray(da, "mask_classes")
    qa_name = _resolve_qa(da, qa, CLASS_PRESETS, "mask_classes")
    class_list = _resolve_values(classes, CLASS_PRESETS, "classes")
    _check_missing(missing, "mask_classes")
    _check_qa_dtype(da, qa_name)
    _check_qa_kind(da, qa_name, "mask_classes", ("categorical", "flags"))
    return _apply_validity(
        da,
        qa_name,
        drop,
        missing,
        "mask_classes",
        ok=_classes_ok,
        classes=np.array(class_list, dtype=np.int64),
    )


def _by_band(obj: xr.DataArray, value: Any, default: float, what: str) -> Any:
    """Turn a number or a mapping band -> number into a scalar or a band-indexed DataArray."""
    if value is None:
        return default
    if not isinstance(value, Mapping):
        if not np.isscalar(value):
            raise InputError(f"{what} must be a number or a mapping of band name -> number")
        return value
    if "band" in obj.dims:
        check_unique_bands(obj, what)
        bands = obj["band"].values.tolist()
        require_bands(obj, value, by=what)
        values = [value.get(b, default) for b in bands]
        if any(v is None for v in values):
            values = [np.nan if v is None else v for v in values]
        return xr.DataArray(np.array(values, dtype=np.float64), dims="band", coords={"band": bands})
    if obj.name in value:
        return value[obj.name] if value[obj.name] is not None else default
    return default


def _check_mapping_keys(ds: xr.Dataset, value: Any, what: str) -> None:
    if isinstance(value, Mapping):
        known = set(ds.data_vars)
        if "band" in ds.dims:
            known |= set(ds["band"].values.tolist())
        unknown = [k for k in value if k not in known]
        if unknown:
            raise BandError(
                f"{what} names {unknown}, which are neither variables nor bands; "
                f"variables are {sorted(map(str, ds.data_vars))}"
            )


def _map_dataset(ds: xr.Dataset, func: Any, **kwargs: Any) -> xr.Dataset:
    return ds.map(func, keep_attrs=True, **kwargs)


def _raw_limits(data: xr.DataArray, lo: Any, hi: Any) -> tuple[Any, Any]:
    """Convert limits given in raw numbers into the cube's values with its recorded scaling."""
    scaling = band_scaling(data) if SCALE_COORD in data.coords else {}
    names = list(band_scaling(data))
    pairs = []
    for name in names:
        pair = scaling.get(name, (1.0, 0.0))  # no record: the cube holds its raw numbers
        if pair is None:
            raise ScaleError(
                f"mask_range(raw=True): the scaling applied to band {name!r} is unknown (NaN "
                "band_scale/band_offset), so raw limits cannot be converted to its values"
            )
        if pair[0] == 0:
            raise ScaleError(f"mask_range(raw=True): band {name!r} has a recorded scale of 0")
        pairs.append(pair)
    # In the cube's dtype, as the values were scaled: a limit DN lands on the very value that
    # DN was scaled to, so inclusive limits stay inclusive.
    dtype = data.dtype
    scale = np.array([p[0] for p in pairs], dtype)
    offset = np.array([p[1] for p in pairs], dtype)
    lo_n = np.array(_per_band(lo, names), dtype)
    hi_n = np.array(_per_band(hi, names), dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        a, b = lo_n * scale + offset, hi_n * scale + offset
    lo_c, hi_c = np.where(scale > 0, a, b), np.where(scale > 0, b, a)  # a negative scale flips
    if "band" not in data.dims:
        return float(lo_c[0]), float(hi_c[0])
    coords = {"band": data["band"].values}
    return xr.DataArray(lo_c, dims="band", coords=coords), xr.DataArray(
        hi_c, dims="band", coords=coords
    )


def mask_range(
    da: T_Xarray,
    lo: Any,
    hi: Any,
    *,
    inclusive: bool = True,
    bands: Any = None,
    raw: bool = False,
) -> T_Xarray:
    """Set values outside the valid range ``[lo, hi]`` to NaN.

    Parameters
    ----------
    da : xarray.DataArray or xarray.Dataset
        Cube (or Dataset, handled variable by variable).
    lo, hi : float, mapping or None
        Lower and upper limits; ``None`` leaves that side open. A mapping gives limits per band
        (or per variable of a Dataset); bands it does not name are not limited.
    inclusive : bool, default True
        Whether the limits themselves are valid. The Landsat nightlights workflow keeps
        ``0 < DN < 10000``, i.e. ``mask_range(da, 0, 10000, inclusive=False)``.
    bands : list of str, optional
        Bands whose range decides validity for the whole pixel: where any of them is out of range,
        every band is set to NaN (the Landsat workflow's rule for its optical bands). By default
        each value is masked on its own.
    raw : bool, default False
        The limits are in the bands' raw (stored) numbers, as product guides give them (Landsat
        C2 SR: valid DN 7273-43636), and are converted to the cube's values with the scaling
        recorded in ``band_scale``/``band_offset`` (``lo * scale + offset``; a cube without the
        record holds raw numbers). So the same limits mask the same pixels whether or not the
        cube was scaled (by :func:`open_stac` from its metadata, or by :func:`scale`). By default
        the limits are in the cube's values as they are. Raises
        :class:`~xfusion.errors.ScaleError` where a band's scaling is unknown (NaN).

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        Floating-point result, chunked like ``da``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.array([0.0, 5.0, 10.0, 12.0], dtype="float32"), dims="x")
    >>> mask_range(da, 0, 10).values
    array([ 0.,  5., 10., nan], dtype=float32)
    >>> mask_range(da, 0, 10, inclusive=False).values
    array([nan,  5., nan, nan], dtype=float32)
    >>> sr = scale(xr.DataArray([[7000.0, 20000.0]], dims=("band", "x"),
    ...                         coords={"band": ["SR_B4"]}), "LANDSAT_C2_SR")
    >>> mask_range(sr, 7273, 43636, raw=True).values.round(3)  # DN limits on reflectance
    array([[ nan, 0.35]])
    """
    if isinstance(da, xr.Dataset):
        _check_mapping_keys(da, lo, "lo")
        _check_mapping_keys(da, hi, "hi")
        return _map_dataset(
            da, mask_range, args=(lo, hi), inclusive=inclusive, bands=bands, raw=raw
        )
    if not isinstance(da, xr.DataArray):
        raise InputError(f"mask_range expects a DataArray or Dataset; got {type(da).__name__}")
    data = _as_float(da)
    lo_v = _by_band(data, lo, -np.inf, "lo")
    hi_v = _by_band(data, hi, np.inf, "hi")
    if isinstance(lo_v, xr.DataArray):
        lo_v = lo_v.fillna(-np.inf)
    if isinstance(hi_v, xr.DataArray):
        hi_v = hi_v.fillna(np.inf)
    if raw:
        lo_v, hi_v = _raw_limits(data, lo_v, hi_v)
    ok = (data >= lo_v) & (data <= hi_v) if inclusive else (data > lo_v) & (data < hi_v)
    if bands is not None:
        _band_names(data, "mask_range")
        require_bands(data, bands)
        ok = ok.sel(band=[bands] if isinstance(bands, str) else list(bands)).all("band")
    out = data.where(ok)
    out.attrs = da.attrs
    return out


def _per_band(value: Any, names: list[Hashable]) -> list[float]:
    """Return the numbers of a scalar or band-indexed factor/offset, one per band."""
    numbers = value.values if isinstance(value, xr.DataArray) else value  # parameters, not data
    return [float(v) for v in np.broadcast_to(np.asarray(numbers, "float64"), (len(names),))]


def _scaling_names(da: xr.DataArray) -> list[Hashable]:
    return list(band_scaling(da))


def _check_rescalable(
    da: xr.DataArray, pairs: dict[Hashable, tuple[float, float]], again: bool
) -> None:
    """Refuse to rescale flag/class bands, and bands already scaled (unless ``again``)."""
    changed = {b: p for b, p in pairs.items() if p != (1.0, 0.0)}
    if not changed:
        return
    kinds = band_kinds(da)
    for band, pair in changed.items():
        if kinds[band] != "continuous":
            raise ScaleError(
                f"band {band!r} holds {kinds[band]} (band_kind), whose values are not quantities: "
                f"scaling it by factor {pair[0]:g}, offset {pair[1]:g} would destroy them; scale "
                "only continuous bands (select them, or give factor as a mapping per band)"
            )
    if again or SCALE_COORD not in da.coords:
        return
    applied = band_scaling(da)
    for band, pair in changed.items():
        prior = applied[band]
        if prior is None:
            raise ScaleError(
                f"band {band!r} has an unknown scaling already applied (NaN band_scale/band_offset,"
                " e.g. STAC items declaring different scales for it), so scaling it by factor "
                f"{pair[0]:g}, offset {pair[1]:g} may scale some of its values twice; open it "
                "with scale_offset=False to scale the raw numbers yourself, or pass again=True"
            )
        if is_physical_scaling(prior):
            raise ScaleError(
                f"band {band!r} is already scaled (scale {prior[0]:g}, offset {prior[1]:g} "
                "applied to its raw numbers, recorded in band_scale/band_offset); scaling it "
                f"again by factor {pair[0]:g}, offset {pair[1]:g} would give wrong values. "
                "Pass again=True to rescale on purpose (e.g. kelvin to Celsius)"
            )


#: Band-name families of the products whose scaling a preset gives: a preset applied to a band
#: of another family (surface temperature scaled as reflectance) is refused.
_PRESET_FAMILIES: dict[str, str] = {
    "S2": "Sentinel-2",
    "LANDSAT_C2_SR": "Landsat C2 reflectance",
    "LANDSAT_C2_ST": "Landsat C2 temperature",
    "LANDSAT_C2_ST_CELSIUS": "Landsat C2 temperature",
}


def _band_family(name: Hashable) -> str | None:
    short = str(name).rsplit(":", 1)[-1].upper()
    if short.startswith("SR_B"):
        return "Landsat C2 reflectance"
    if short.startswith("ST_B"):
        return "Landsat C2 temperature"
    if short in {f"B{i}" for i in range(1, 13)} | {f"B{i:02d}" for i in range(1, 13)} | {"B8A"}:
        return "Sentinel-2"
    return None


def _check_preset_bands(da: Any, preset: str) -> None:
    """Refuse a preset on bands whose names say they belong to another product (metadata)."""
    if isinstance(da, xr.Dataset):
        names: list[Hashable] = list(da.data_vars)
    elif isinstance(da, xr.DataArray) and "band" in da.dims and "band" in da.coords:
        names = list(da["band"].values.tolist())
    else:
        return
    want = _PRESET_FAMILIES[preset]
    # Sentinel-2's plain "B4"-style names are also Landsat Collection-1 names: only a clash
    # with a Landsat Collection-2 band (SR_B*, ST_B*) is certain.
    others = {
        n: f
        for n in names
        if (f := _band_family(n)) is not None and f != want and f.startswith("Landsat")
    }
    if others:
        listed = ", ".join(f"{n!r} ({f})" for n, f in others.items())
        raise ScaleError(
            f"scale preset {preset!r} is for {want} bands, but the cube also holds {listed}; "
            "scale each product's bands with its own preset (select them with .sel(band=[...])) "
            "or give a mapping of factors by band"
        )


def scale(da: T_Xarray, factor: Any, offset: Any = 0.0, *, again: bool = False) -> T_Xarray:
    """Rescale stored values to physical units: ``da * factor + offset``.

    A cube carries, per band, the scaling already applied to its raw numbers in the
    ``band_scale``/``band_offset`` coordinates (:mod:`xfusion.bands`; set by
    :func:`xfusion.open_stac`). ``scale`` refuses a band that is already scaled (reflectance
    scaled twice looks plausible and is wrong), a band whose applied scaling is unknown (NaN),
    and a band that holds bit flags or class labels (``band_kind`` coordinate, or a preset name
    such as ``QA_PIXEL``); bands given factor 1 and offset 0 are never refused. The result records
    the new total scaling: ``raw * s * factor + (o * factor + offset)`` after ``(s, o)``. A cube
    without the coordinates is taken to hold its raw numbers, and gets them (when it has a
    ``band`` dimension).

    Parameters
    ----------
    da : xarray.DataArray or xarray.Dataset
        Cube (or Dataset, handled variable by variable). NaN stays NaN.
    factor : float, mapping or str
        Multiplier; a mapping gives one per band (or per variable of a Dataset; unnamed bands keep
        factor 1, as does a band mapped to ``None``); a name from :data:`SCALE_PRESETS` sets both
        factor and offset: ``"S2"`` (÷10000), ``"LANDSAT_C2_SR"`` (2.75e-5, −0.2),
        ``"LANDSAT_C2_ST"`` (kelvin) and ``"LANDSAT_C2_ST_CELSIUS"`` (°C).
    offset : float or mapping, default 0.0
        Added after multiplying; ignored when ``factor`` is a preset name.
    again : bool, default False
        Rescale bands that are already scaled (or of unknown scaling) on purpose, e.g. surface
        temperature opened in kelvin to Celsius with ``scale(st, 1, -273.15, again=True)``.
        Flag and class bands are refused even then.

    Returns
    -------
    xarray.DataArray or xarray.Dataset
        Floating-point result (``float32`` unless ``da`` is ``float64``), chunked like ``da``,
        with ``band_scale``/``band_offset`` recording the total scaling.

    Raises
    ------
    ScaleError
        A band to rescale is already scaled or of unknown scaling (without ``again=True``), or it
        holds flags or class labels; the message names the band and the scaling applied. Or a
        preset is applied to bands named for another product's scaling (``ST_B10`` with
        ``"LANDSAT_C2_SR"``, ``SR_B4`` with ``"S2"`` or ``"LANDSAT_C2_ST"``).
    BandError
        A mapping names a band or variable that is not there.
    InputError
        ``factor`` is an unknown preset name, or not a number or mapping.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.array([10000, 2500], dtype="uint16"), dims="x")
    >>> scale(da, 1e-4).values
    array([1.  , 0.25], dtype=float32)
    >>> scale(da, "LANDSAT_C2_SR").values.round(4)
    array([ 0.075 , -0.1312], dtype=float32)
    >>> cube = xr.DataArray(np.array([[20000.0]]), dims=("band", "x"), coords={"band": ["SR_B4"]})
    >>> sr = scale(cube, "LANDSAT_C2_SR")
    >>> float(sr.band_scale[0]), float(sr.band_offset[0])
    (2.75e-05, -0.2)
    >>> scale(sr, "LANDSAT_C2_SR")
    Traceback (most recent call last):
    ...
    xfusion.errors.ScaleError: band 'SR_B4' is already scaled (scale 2.75e-05, offset -0.2 ...
    """
    if isinstance(factor, str):
        if factor not in SCALE_PRESETS:
            raise InputError(
                f"unknown scale preset {factor!r}; presets are {sorted(SCALE_PRESETS)}"
            )
        _check_preset_bands(da, factor)
        factor, offset = SCALE_PRESETS[factor]
    if isinstance(da, xr.Dataset):
        _check_mapping_keys(da, factor, "factor")
        _check_mapping_keys(da, offset, "offset")
        return _map_dataset(da, scale, args=(factor, offset), again=again)
    if not isinstance(da, xr.DataArray):
        raise InputError(f"scale expects a DataArray or Dataset; got {type(da).__name__}")
    if "band" in da.dims:
        check_unique_bands(da, "scale")
    data = _as_float(da)
    f = _by_band(data, factor, 1.0, "factor")
    o = _by_band(data, offset, 0.0, "offset")
    # A band mapped to None keeps factor 1 and offset 0 (not NaN, which would blank it).
    f = f.fillna(1.0) if isinstance(f, xr.DataArray) else f
    o = o.fillna(0.0) if isinstance(o, xr.DataArray) else o
    names = _scaling_names(data)
    pairs = dict(
        zip(
            names,
            zip(_per_band(f, names), _per_band(o, names), strict=True),
            strict=True,
        )
    )
    _check_rescalable(data, pairs, again)
    out = (data * f + o).astype(data.dtype)
    out.attrs = da.attrs
    if "band" not in out.dims and SCALE_COORD not in out.coords:
        return out  # one variable of a Dataset: nothing recorded (it would conflict on merging)
    known = SCALE_COORD in data.coords
    applied = band_scaling(data)
    total: dict[Hashable, tuple[float, float] | None] = {}
    for band, (fb, ob) in pairs.items():
        prior = applied[band] if known else (1.0, 0.0)
        total[band] = None if prior is None else (prior[0] * fb, prior[1] * fb + ob)
    return set_band_scaling(out, total)


# --------------------------------------------------------------------------------------------
# dilation


def _chunks_at_least(chunks: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """Merge chunks so that every chunk is at least ``depth`` long (dask #11580)."""
    if len(chunks) <= 1 or min(chunks) >= depth:
        return chunks
    out: list[int] = []
    for c in chunks:
        if out and out[-1] < depth:
            out[-1] += c
        else:
            out.append(c)
    if len(out) > 1 and out[-1] < depth:
        last = out.pop()
        out[-1] += last
    return tuple(out)


def _as_bool_block(block: np.ndarray) -> np.ndarray:
    if block.dtype == bool:
        return block
    if block.dtype.kind == "f":
        return ~np.isnan(block) & (block != 0)
    return block != 0


def _dilate_block(block: np.ndarray, radius: int) -> np.ndarray:
    return binary_dilate_disk(_as_bool_block(block), radius)


def dilate(mask: xr.DataArray, radius: int) -> xr.DataArray:
    """Grow a boolean mask by a disk of ``radius`` pixels over ``y`` and ``x``.

    A pixel of the result is ``True`` where any pixel of ``mask`` within Euclidean distance
    ``radius`` is set; pixels beyond the edges count as ``False``. This equals
    ``scipy.ndimage.binary_dilation`` with ``skimage.morphology.disk(radius)`` as structure,
    applied to every ``(y, x)`` slice. Chunked masks are dilated block by block with a halo of
    ``radius`` pixels (chunks shorter than the halo are merged first), so the result does not
    depend on the chunking.

    Parameters
    ----------
    mask : xarray.DataArray
        Boolean mask, or numbers where non-zero (and not NaN) means set, with ``y`` and ``x``
        dimensions and any others; e.g. ``cube.isnull()`` to grow the nodata/cloud area.
    radius : int
        Disk radius in pixels, ``>= 0`` (the multitemporal cloud-masking workflow uses 3).

    Returns
    -------
    xarray.DataArray
        Boolean mask with the same dims, coordinates and chunks (where no merge was needed).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> m = xr.DataArray(np.zeros((5, 5), bool), dims=("y", "x"))
    >>> m[2, 2] = True
    >>> dilate(m, 1).astype(int).values
    array([[0, 0, 0, 0, 0],
           [0, 0, 1, 0, 0],
           [0, 1, 1, 1, 0],
           [0, 0, 1, 0, 0],
           [0, 0, 0, 0, 0]])
    """
    mask = _require_dataarray(mask, "dilate")
    if isinstance(radius, bool) or not isinstance(radius, int | np.integer) or radius < 0:
        raise InputError(f"radius must be a non-negative integer number of pixels; got {radius!r}")
    radius = int(radius)
    missing = [d for d in ("y", "x") if d not in mask.dims]
    if missing:
        raise InputError(f"dilate needs dims 'y' and 'x'; mask dims are {mask.dims}")
    if mask.dtype.kind not in "biuf":
        raise InputError(f"mask must be boolean or numeric; got dtype {mask.dtype}")
    order = [d for d in mask.dims if d not in ("y", "x")] + ["y", "x"]
    arr_da = mask.transpose(*order)
    data = arr_da.data
    ny, nx = len(order) - 2, len(order) - 1
    if isinstance(data, dsa.Array):
        chunks = list(data.chunks)
        for ax in (ny, nx):
            chunks[ax] = _chunks_at_least(chunks[ax], radius)
        if tuple(chunks) != data.chunks:
            data = data.rechunk(tuple(chunks))
        depth = {ax: (radius if len(data.chunks[ax]) > 1 else 0) for ax in (ny, nx)}
        out = dsa.map_overlap(
            _dilate_block,
            data,
            depth=depth,
            boundary="none",
            dtype=bool,
            meta=np.array((), dtype=bool),
            radius=radius,
        )
    else:
        out = _dilate_block(data, radius)
    result = arr_da.copy(data=out)
    return result.transpose(*mask.dims)
