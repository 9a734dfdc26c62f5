"""Layers of several sources on one grid: one image per layer, one stacked cube, a held-out strip.

A workflow that fuses sensors reads each layer (SAR, an optical composite, terrain, labels) from
its own source onto one grid, reduces each to a single image and stacks the bands into one cube.
:func:`open_layer` reads one layer from a STAC file or an Earth Engine asset as one image
(:func:`xfusion.open_stac`, :func:`xfusion.open_ee`, then :func:`single_image`);
:func:`single_image` takes the only image of a series, its median, or, for a categorical layer
(labels are never averaged), its first image; :func:`stack_layers` concatenates the layers'
bands into one float32 cube; :func:`palsar_db` turns JAXA PALSAR mosaic digital numbers into
backscatter in dB; :func:`holdout_strip` marks the eastern columns a model is scored on. All
are lazy but :func:`holdout_strip`, a small in-memory mask built from the coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xfusion.errors import EmptySelectionError, InputError
from xfusion.preprocess.composite import composite

__all__ = ["holdout_strip", "open_layer", "palsar_db", "single_image", "stack_layers"]


def single_image(
    cube: xr.DataArray, *, categorical: bool = False, what: str = "layer"
) -> xr.DataArray:
    """Return one image of a layer: its only image, the median of its series, or the first.

    Parameters
    ----------
    cube : xarray.DataArray
        ``(time, band, y, x)`` or already ``(band, y, x)`` (returned as it is).
    categorical : bool
        Class codes (labels): never averaged, the first image is taken.
    what : str
        The layer's source, named in the error.

    Returns
    -------
    xarray.DataArray
        ``(band, y, x)``, lazy where ``cube`` is.

    Raises
    ------
    EmptySelectionError
        ``cube`` has no image (an empty date range).

    Examples
    --------
    >>> import numpy as np, xarray as xr, pandas as pd
    >>> series = xr.DataArray(np.arange(3.0).reshape(3, 1, 1, 1), dims=("time", "band", "y", "x"),
    ...                       coords={"time": pd.date_range("2010-01-01", periods=3)})
    >>> single_image(series).values.ravel().tolist(), single_image(series, categorical=True).dims
    ([1.0], ('band', 'y', 'x'))
    """
    if "time" not in cube.dims:
        return cube
    if cube.sizes["time"] == 0:
        raise EmptySelectionError(f"no image of {what!r} in the date range")
    if cube.sizes["time"] == 1 or categorical:
        return cube.isel(time=0)
    return composite(cube, "median")


def open_layer(
    where: Any,
    bands: Sequence[str],
    names: Sequence[str],
    *,
    grid: Any,
    source: str = "stac",
    chunks: Mapping[str, int] | None = None,
    start: str | None = None,
    end: str | None = None,
    image: bool = False,
    categorical: bool = False,
) -> xr.DataArray:
    """Open one layer of a multi-source stack as a single image ``(band, y, x)`` (lazy).

    Parameters
    ----------
    where : str or path
        A STAC ItemCollection / Collection / Catalog JSON file (``source="stac"``) or an Earth
        Engine asset id (``source="ee"``).
    bands : sequence of str
        Asset (STAC) or band (Earth Engine) names read.
    names : sequence of str
        The band names they get in the stack, one per ``bands``.
    grid : odc.geo.geobox.GeoBox
        The stack's grid.
    source : {"stac", "ee"}
        Which opener reads ``where``.
    chunks : mapping, optional
        Spatial chunks, e.g. ``{"y": 512, "x": 512}``.
    start, end : str, optional
        Images with ``start <= time < end`` only.
    image : bool
        Earth Engine: ``where`` is one ``ee.Image``, not an ``ee.ImageCollection`` (no dates).
    categorical : bool
        Class codes: the first image rather than the median (:func:`single_image`).

    Raises
    ------
    InputError
        An unknown ``source``, or ``names`` not one per ``bands``.
    EmptySelectionError
        No image between ``start`` and ``end``.
    """
    import xfusion as xf

    bands, names = list(bands), list(names)
    if len(bands) != len(names):
        raise InputError(f"names must give one name per band {bands}; got {names}")
    if source == "stac":
        assets = dict(zip(bands, names, strict=True))
        cube = xf.open_stac(str(where), grid=grid, assets=assets, chunks=chunks).sel(band=names)
        if "time" in cube.dims and (start is not None or end is not None):
            times = cube.time.to_index()
            keep = np.ones(len(times), bool)
            if start is not None:
                keep &= times >= np.datetime64(start)
            if end is not None:
                keep &= times < np.datetime64(end)
            cube = cube.isel(time=np.flatnonzero(keep))
    elif source == "ee":
        import ee

        if image:
            cube = xf.open_ee(ee.Image(where), grid=grid, bands=bands, chunks=chunks)
        else:
            dates = {"start": start, "end": end, "chunks": {"time": 1, **(chunks or {})}}
            cube = xf.open_ee(where, grid=grid, bands=bands, **dates)
        cube = cube.assign_coords(band=names)
    else:
        raise InputError(f"source must be 'stac' or 'ee'; got {source!r}")
    return single_image(cube, categorical=categorical, what=str(where))


def stack_layers(
    layers: Sequence[xr.DataArray], chunks: Mapping[str, int] | None = None
) -> xr.DataArray:
    """Stack the bands of layers on one grid into one float32 ``(band, y, x)`` cube (lazy).

    The layers' coordinates are taken from the first (the grids must be the same; they are not
    compared). A Dask-backed stack is rechunked to all bands in one chunk and ``chunks``
    (e.g. ``{"y": 256, "x": 256}``) in space.

    Raises
    ------
    InputError
        No layer, or the band names repeat across the layers.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> dims = ("band", "y", "x")
    >>> sar = xr.DataArray(np.zeros((2, 2, 2)), dims=dims, coords={"band": ["HH", "HV"]})
    >>> dem = xr.DataArray(np.ones((1, 2, 2)), dims=dims, coords={"band": ["DEM"]})
    >>> cube = stack_layers([sar, dem])
    >>> cube.band.values.tolist(), cube.dtype
    (['HH', 'HV', 'DEM'], dtype('float32'))
    """
    if not layers:
        raise InputError("stack_layers needs at least one layer")
    bands = [str(b) for layer in layers for b in layer["band"].values]
    if len(set(bands)) != len(bands):
        raise InputError(f"band names repeat across the layers: {bands}; expected unique names")
    cube = xr.concat(list(layers), dim="band", coords="minimal", compat="override", join="override")
    cube = cube.astype(np.float32)
    if cube.chunks is not None:
        cube = cube.chunk({"band": -1, **(chunks or {})})
    return cube


def palsar_db(dn: xr.DataArray) -> xr.DataArray:
    """JAXA PALSAR mosaic digital numbers as γ⁰ backscatter in dB: 10·log10(DN²) − 83 (lazy).

    DN 0 (and below) is no data: NaN. The result is float32 with ``units`` ``"dB"``.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> palsar_db(xr.DataArray(np.array([0.0, 1.0, 10.0]))).values.tolist()
    [nan, -83.0, -63.0]
    """
    out = (10.0 * np.log10(dn.where(dn > 0) ** 2) - 83.0).astype(np.float32)
    out.attrs = {"units": "dB"}
    return out


def holdout_strip(cube: xr.DataArray, fraction: float, *, min_train: int = 1) -> xr.DataArray:
    """Boolean ``(y, x)`` mask of the eastern ``fraction`` of the columns (in memory).

    At least one column is held out. Built from the sizes and coordinates only.

    Parameters
    ----------
    cube : xarray.DataArray
        Any cube with ``y`` and ``x``.
    fraction : float
        Share of the columns held out, in (0, 1).
    min_train : int
        The fewest columns left west of the strip (e.g. a training chip's width).

    Raises
    ------
    InputError
        ``fraction`` outside (0, 1), or fewer than ``min_train`` columns left for training.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.zeros((2, 8)), dims=("y", "x"))
    >>> holdout_strip(cube, 0.25).values[0].astype(int).tolist()
    [0, 0, 0, 0, 0, 0, 1, 1]
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"fraction must be strictly between 0 and 1; got {fraction!r}")
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    first = nx - max(1, round(fraction * nx))
    if first < min_train:
        raise InputError(
            f"the training region is {first} px wide west of the held-out strip; expected at "
            f"least {min_train} px (a training patch's width): hold out less or use smaller "
            "patches"
        )
    mask = np.zeros((ny, nx), dtype=bool)
    mask[:, first:] = True
    coords = {d: cube[d] for d in ("y", "x") if d in cube.coords}
    return xr.DataArray(mask, dims=("y", "x"), coords=coords, name="holdout")
