"""What each band *is*: its kind (continuous, categorical, bit flags) and the scaling applied.

A band's meaning decides how it may be resampled and rescaled. A cloud bit-flag band averaged over
a block loses its flags; a class-label band interpolated bilinearly invents classes; a reflectance
scaled twice is plausible-looking nonsense. xfusion therefore carries, per band, two pieces of
metadata as non-dimension coordinates along ``band`` (coordinates, unlike attributes, survive
arithmetic, band selection and concatenation):

``band_kind`` (str)
    ``"continuous"`` (values: reflectance, radiance, elevation ...), ``"categorical"`` (class
    labels: SCL, land cover, a training label) or ``"flags"`` (bit fields: QA60, QA_PIXEL, BQA).
``band_scale`` and ``band_offset`` (float64)
    The ``value = raw * scale + offset`` already applied to the band's raw numbers, as far as
    xfusion knows: ``1.0``/``0.0`` when the raw numbers are kept, ``NaN`` when it is not known.

Where a cube has no ``band_kind`` coordinate, :func:`band_kinds` infers a kind from the band name:
the quality bands of the mask presets are flags (``QA60``, ``QA_PIXEL``, ``BQA``, ``QA_RADSAT``,
``SR_QA_AEROSOL``), ``SCL`` is categorical, everything else is continuous. A fused band named
``"s2:QA60"`` is recognised by the part after the last colon. :func:`set_band_kinds` overrides it.

Examples
--------
>>> import numpy as np, xarray as xr
>>> cube = xr.DataArray(np.zeros((3, 2, 2)), dims=("band", "y", "x"),
...                     coords={"band": ["B04", "QA60", "label"]})
>>> band_kinds(cube)
{'B04': 'continuous', 'QA60': 'flags', 'label': 'continuous'}
>>> band_kinds(set_band_kinds(cube, {"label": "categorical"}))
{'B04': 'continuous', 'QA60': 'flags', 'label': 'categorical'}
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any, Literal

import numpy as np
import xarray as xr

from xfusion.errors import InputError
from xfusion.validate import require_bands

__all__ = [
    "BAND_KINDS",
    "KIND_COORD",
    "NAMED_KINDS",
    "OFFSET_COORD",
    "SCALE_COORD",
    "BandKind",
    "band_kinds",
    "band_scaling",
    "describe_kinds",
    "is_physical_scaling",
    "named_kind",
    "set_band_kinds",
    "set_band_scaling",
]

BandKind = Literal["continuous", "categorical", "flags"]
BAND_KINDS: tuple[str, ...] = ("continuous", "categorical", "flags")
KIND_COORD = "band_kind"
SCALE_COORD = "band_scale"
OFFSET_COORD = "band_offset"

#: Band names whose kind is known from the product they come from (matched case-sensitively on
#: the part after the last ``:``, so fused names such as ``"s2:QA60"`` match too).
NAMED_KINDS: dict[str, str] = {
    "QA60": "flags",
    "QA_PIXEL": "flags",
    "QA_RADSAT": "flags",
    "SR_QA_AEROSOL": "flags",
    "BQA": "flags",
    "SCL": "categorical",
}


def _names(da: xr.DataArray) -> list[Hashable]:
    if "band" not in da.dims:
        return []
    if "band" not in da.coords:
        return list(range(da.sizes["band"]))
    return [b.item() if isinstance(b, np.generic) else b for b in da["band"].values]


def _metadata(coord: xr.DataArray) -> np.ndarray:
    """Return a band-metadata coordinate's values, also where ``.chunk()`` made it a Dask array.

    ``DataArray.chunk`` chunks non-index coordinates too; these hold a few numbers or strings per
    band, so reading them runs the tiny graph in this thread (not on the configured scheduler),
    or on the cluster where ``persist`` left them there.
    """
    data = coord.data
    if not hasattr(data, "dask"):
        return np.asarray(data)
    try:
        return np.asarray(data.compute(scheduler="sync"))  # xf: computes band metadata only
    except (KeyError, ValueError):  # persisted on a distributed cluster: the keys live there
        return np.asarray(data.compute())  # xf: computes band metadata only


def _kind_from_name(name: Hashable) -> str:
    short = str(name).rsplit(":", 1)[-1]
    return NAMED_KINDS.get(short, "continuous")


def named_kind(name: Hashable) -> str | None:
    """Return the kind a product's band or asset name gives, or None for other names.

    Lenient, for metadata such as STAC asset keys: any case (``"qa_pixel"``), a file extension
    (``"QA_PIXEL.TIF"``) and a fused prefix (``"s2:QA60"``) are allowed.
    """
    short = str(name).rsplit(":", 1)[-1]
    for candidate in (short, short.rsplit(".", 1)[0]):
        for spelling in (candidate, candidate.upper()):
            if spelling in NAMED_KINDS:
                return NAMED_KINDS[spelling]
    return None


def band_kinds(da: xr.DataArray) -> dict[Hashable, str]:
    """Return the kind of each band: the ``band_kind`` coordinate, else inferred from the name.

    A cube without a ``band`` dimension is one continuous band under the key ``None``, unless its
    ``band_kind`` attribute or scalar coordinate says otherwise.
    """
    if "band" not in da.dims:
        kind = _metadata(da.coords[KIND_COORD]).item() if KIND_COORD in da.coords else None
        kind = kind or da.attrs.get(KIND_COORD) or _kind_from_name(da.name or "")
        return {None: str(kind)}
    names = _names(da)
    if KIND_COORD in da.coords and da.coords[KIND_COORD].dims == ("band",):
        stored = [str(k) for k in _metadata(da.coords[KIND_COORD])]
        return {
            n: (k if k in BAND_KINDS else _kind_from_name(n))
            for n, k in zip(names, stored, strict=True)
        }
    return {n: _kind_from_name(n) for n in names}


def set_band_kinds(da: xr.DataArray, kinds: Mapping[Hashable, str] | str) -> xr.DataArray:
    """Return ``da`` with the ``band_kind`` coordinate set (other bands keep their kind).

    Parameters
    ----------
    kinds : mapping of band name to kind, or one kind for every band
        Kinds are ``"continuous"``, ``"categorical"`` or ``"flags"``.

    Raises
    ------
    BandError
        A named band is not in the cube.
    InputError
        A kind is not one of the three.
    """
    if isinstance(kinds, str):
        kinds = {n: kinds for n in _names(da)} if "band" in da.dims else {None: kinds}
    if not isinstance(kinds, Mapping):
        raise InputError(
            f"band kinds must be a mapping of band name to kind or one kind; got {kinds!r}"
        )
    for name, kind in kinds.items():
        if kind not in BAND_KINDS:
            raise InputError(
                f"kind of band {name!r} must be one of {list(BAND_KINDS)}; got {kind!r}"
            )
    if "band" not in da.dims:
        (kind,) = kinds.values()
        return da.assign_coords({KIND_COORD: kind})
    current = band_kinds(da)
    require_bands(list(current), kinds, by="band kinds")
    current.update(kinds)
    return da.assign_coords({KIND_COORD: ("band", np.array(list(current.values()), dtype=object))})


def band_scaling(da: xr.DataArray) -> dict[Hashable, tuple[float, float] | None]:
    """``(scale, offset)`` already applied to each band's raw numbers, or ``None`` if unknown.

    ``(1.0, 0.0)`` means the band holds its raw numbers (or values scaled by the user without
    xfusion knowing); a band with a different pair must not be scaled again.
    """
    names = _names(da) if "band" in da.dims else [None]
    if SCALE_COORD not in da.coords:
        return dict.fromkeys(names)
    scale = np.broadcast_to(np.asarray(_metadata(da.coords[SCALE_COORD]), "float64"), (len(names),))
    offset = (
        np.broadcast_to(np.asarray(_metadata(da.coords[OFFSET_COORD]), "float64"), (len(names),))
        if OFFSET_COORD in da.coords
        else np.zeros(len(names))
    )
    out: dict[Hashable, tuple[float, float] | None] = {}
    for n, s, o in zip(names, scale, offset, strict=True):
        out[n] = None if math.isnan(s) or math.isnan(o) else (float(s), float(o))
    return out


def set_band_scaling(
    da: xr.DataArray, scaling: Mapping[Hashable, tuple[float, float] | None]
) -> xr.DataArray:
    """Return ``da`` with ``band_scale``/``band_offset`` set for the named bands (NaN: unknown)."""
    current = band_scaling(da)
    require_bands(list(current), scaling, by="band scaling")
    current.update(scaling)
    scale = np.array([math.nan if v is None else v[0] for v in current.values()], "float64")
    offset = np.array([math.nan if v is None else v[1] for v in current.values()], "float64")
    if "band" not in da.dims:
        return da.assign_coords({SCALE_COORD: scale[0], OFFSET_COORD: offset[0]})
    return da.assign_coords({SCALE_COORD: ("band", scale), OFFSET_COORD: ("band", offset)})


def is_physical_scaling(pair: tuple[float, float] | None) -> bool:
    """Whether ``(scale, offset)`` from :func:`band_scaling` changed the raw numbers."""
    return pair is not None and (pair[0] != 1.0 or pair[1] != 0.0)


def describe_kinds(kinds: Mapping[Hashable, Any]) -> str:
    """``"B04 (continuous), QA60 (flags)"``: for messages."""
    return ", ".join(f"{n} ({k})" for n, k in kinds.items())
