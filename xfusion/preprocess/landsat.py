"""Landsat Collection-2 Level-2 digital numbers as reflectance and rescaled temperature.

A Collection-2 Level-2 scene holds surface reflectance (``SR_B1`` … ``SR_B7``) and surface
temperature (``ST_B10``) as digital numbers with a ``QA_PIXEL`` quality band.
:func:`collection2_features` turns such a cube into model features lazily, the way the
night-lights workflow does: pixels flagged by the chosen ``QA_PIXEL`` bits or with an optical
band outside the valid range are masked, reflectance and temperature are scaled to physical
units, and temperature is clamped to a range and rescaled to 0–1 over it. The defaults are
Collection 2's (USGS, "Landsat 8-9 Collection 2 Level 2 Science Product Guide").
"""

from __future__ import annotations

from collections.abc import Sequence

import xarray as xr

import xfusion.accessor  # noqa: F401  (registers ``.xf``)
from xfusion.errors import InputError
from xfusion.validate import require_bands

__all__ = ["OPTICAL_BANDS", "collection2_assets", "collection2_features"]

#: Surface-reflectance bands of Landsat 8-9 Collection-2 Level-2.
OPTICAL_BANDS: tuple[str, ...] = tuple(f"SR_B{i}" for i in range(1, 8))


def collection2_assets(
    optical_bands: Sequence[str] = OPTICAL_BANDS,
    thermal_bands: Sequence[str] = ("ST_B10",),
    qa_band: str = "QA_PIXEL",
) -> list[str]:
    """Return the bands :func:`collection2_features` reads, in order: optical, thermal, QA.

    Examples
    --------
    >>> collection2_assets(["SR_B4"], [])
    ['SR_B4', 'QA_PIXEL']
    """
    return [*optical_bands, *thermal_bands, qa_band]


def collection2_features(
    landsat: xr.DataArray,
    *,
    optical_bands: Sequence[str] = OPTICAL_BANDS,
    thermal_bands: Sequence[str] = ("ST_B10",),
    qa_band: str = "QA_PIXEL",
    qa_bits: Sequence[int] = (0, 1, 2, 3, 4),
    sr_valid_range: Sequence[float] = (7273.0, 43636.0),
    sr_scale: float = 2.75e-5,
    sr_offset: float = -0.2,
    st_scale: float = 0.00341802,
    st_offset: float = 149.0,
    thermal_range: Sequence[float] = (273.15, 373.15),
) -> xr.DataArray:
    """Masked reflectance and rescaled temperature of Collection-2 Level-2 digital numbers (lazy).

    Parameters
    ----------
    landsat : xarray.DataArray
        ``(..., band, y, x)`` digital numbers holding ``optical_bands``, ``thermal_bands`` and
        ``qa_band`` (a :class:`~xfusion.errors.BandError` names a missing one).
    optical_bands, thermal_bands : sequence of str
        Surface-reflectance and surface-temperature bands (``thermal_bands`` may be empty).
    qa_band : str
        The quality band.
    qa_bits : sequence of int
        ``qa_band`` bits whose pixels are masked (0 fill, 1 dilated cloud, 2 cirrus, 3 cloud,
        4 cloud shadow).
    sr_valid_range : (float, float)
        Valid optical digital numbers, both ends excluded: a pixel is masked in every band
        where any optical band is outside (7273–43636 is reflectance 0–1).
    sr_scale, sr_offset : float
        Reflectance = DN × ``sr_scale`` + ``sr_offset``.
    st_scale, st_offset : float
        Temperature (K) = DN × ``st_scale`` + ``st_offset``.
    thermal_range : (float, float)
        Temperatures are clamped to this range and rescaled to 0–1 over it.

    Returns
    -------
    xarray.DataArray
        ``optical_bands`` (reflectance) then ``thermal_bands`` (0–1), NaN where masked; lazy
        where ``landsat`` is.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> values = [[[25455.0, 25455.0]], [[323.15, 400.0]], [[0, 8]]]
    >>> dn = xr.DataArray(values, dims=("band", "y", "x"),
    ...                   coords={"band": ["SR_B4", "ST_B10", "QA_PIXEL"]})
    >>> out = collection2_features(dn, optical_bands=["SR_B4"], st_scale=1.0, st_offset=0.0)
    >>> out.round(4).values.tolist()  # QA bit 3 (cloud) masks the second pixel
    [[[0.5, nan]], [[0.5, nan]]]
    """
    optical, thermal = list(optical_bands), list(thermal_bands)
    if not optical:
        raise InputError("collection2_features needs at least one optical band; got none")
    for name, pair in (("sr_valid_range", sr_valid_range), ("thermal_range", thermal_range)):
        if len(pair) != 2 or not pair[0] < pair[1]:
            raise InputError(f"{name} must be (low, high) with low < high; got {tuple(pair)!r}")
    require_bands(landsat, collection2_assets(optical, thermal, qa_band), "Landsat cube")
    masked = landsat.xf.mask_bits(qa_band, list(qa_bits))
    lo, hi = sr_valid_range
    masked = masked.xf.mask_range(lo, hi, inclusive=False, bands=optical)
    parts = [masked.sel(band=optical).xf.scale(sr_scale, sr_offset)]
    if thermal:
        t_lo, t_hi = thermal_range
        kelvin = masked.sel(band=thermal).xf.scale(st_scale, st_offset)
        parts.append((kelvin.clip(t_lo, t_hi) - t_lo) / (t_hi - t_lo))
    return xr.concat(parts, dim="band") if len(parts) > 1 else parts[0]
