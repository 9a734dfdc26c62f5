"""Layers of several sources on one grid: one image per layer, one stacked cube, a held-out strip.

A workflow that fuses sensors reads each layer (SAR, an optical composite, terrain, labels) from
its own source onto one grid, reduces each to a single image and stacks the bands into one cube.
:func:`open_layer` reads one layer from a STAC file or an Earth Engine asset as one image
(:func:`xfusion.open_stac`, :func:`xfusion.open_ee`, then :func:`single_image`);
:func:`single_image` takes the only image of a series, its median, or, for a categorical layer
(labels are never averaged), its first image; :func:`stack_layers` concatenates the layers'
bands into one float32 cube; :func:`palsar_db` turns JAXA PALSAR mosaic digital numbers into
backscatter in dB; :func:`radar_geometry` derives from a DEM what the SAR's viewing geometry
does to the terrain (local incidence angle, radar shadow); :func:`holdout_strip`
marks the eastern columns a model is scored on. All are lazy but :func:`holdout_strip`, a small
in-memory mask built from the coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xfusion.errors import EmptySelectionError, InputError
from xfusion.preprocess.composite import composite

__all__ = [
    "holdout_strip",
    "open_layer",
    "palsar_db",
    "radar_geometry",
    "single_image",
    "stack_layers",
]

_LOOKS = ("east", "west")


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


def _radar_geometry_block(
    dem: np.ndarray, spacing: float, incidence: float, flip: bool
) -> np.ndarray:
    """``(2, y, x)`` local incidence (degrees) and radar shadow (0/1) of whole DEM rows."""
    dem = np.asarray(dem, dtype=np.float64)
    if flip:  # range must increase along the last axis
        dem = dem[:, ::-1]
    finite = np.isfinite(dem)
    # a gap takes its row's mean (rows are whole in every block: the same for any y chunking)
    counts = finite.sum(axis=1, keepdims=True)
    means = np.where(finite, dem, 0.0).sum(axis=1, keepdims=True) / np.maximum(counts, 1)
    filled = np.where(finite, dem, means)
    inc = np.radians(incidence)
    slope = np.gradient(filled, spacing, axis=1) if dem.shape[1] > 1 else np.zeros_like(filled)
    local = inc - np.arctan(slope)  # a slope facing the sensor lowers the incidence
    # a ray from the sensor drops 1/tan(incidence) per metre of range: a pixel below the highest
    # ray of the terrain nearer in range is hidden (shadow)
    height = filled + np.arange(dem.shape[1])[None, :] * spacing / np.tan(inc)
    horizon = np.maximum.accumulate(height, axis=1)
    hidden = np.zeros(dem.shape, dtype=bool)
    hidden[:, 1:] = horizon[:, :-1] > height[:, 1:] + 1e-6
    shadow = hidden | (local >= np.pi / 2)  # behind terrain, or a back slope beyond grazing
    out = np.stack([np.degrees(local), shadow.astype(np.float64)])
    out[:, ~finite] = np.nan
    if flip:
        out = out[:, :, ::-1]
    return out.astype(np.float32)


def radar_geometry(
    dem: xr.DataArray,
    *,
    look: str = "east",
    incidence: float = 35.0,
    names: Sequence[str] = ("local_incidence", "radar_shadow"),
) -> xr.DataArray:
    """SAR viewing geometry over a DEM: local incidence angle and radar shadow mask (lazy).

    A side-looking radar sees slopes facing it brightly and slopes facing away darkly (the local
    incidence angle), and gets nothing back from ground hidden behind terrain nearer in range
    (radar shadow: backscatter at the noise floor, as dark as calm water) or from slopes steeper
    than the incidence angle facing it (layover). SAR processors ship these as a layover/shadow
    mask and an incidence-angle band (e.g. ASF's RTC products, the ``angle`` and ``qa`` bands of
    the JAXA PALSAR mosaics); here they are computed from the DEM for a sensor whose range runs
    along the grid's rows, the usual approximation for a near-polar orbit: ``look="east"`` (a
    right-looking sensor on an ascending pass, e.g. the PALSAR mosaics) or ``"west"``.

    Parameters
    ----------
    dem : xarray.DataArray
        Elevation (m), ``(y, x)`` or with a ``band`` dimension of length one, on a projected grid
        whose ``x`` coordinate is in metres (its spacing is the range pixel spacing).
    look : {"east", "west"}
        Direction the sensor looks (the direction of increasing range).
    incidence : float
        Incidence angle on flat ground, degrees in (0, 90).
    names : pair of str
        Band names of the two outputs.

    Returns
    -------
    xarray.DataArray
        float32 ``(band, y, x)``: the local incidence angle in degrees (in the range plane:
        flat ground gives ``incidence``, slopes facing the sensor less, layover at 0 or below)
        and 1 where the pixel is in radar shadow, else 0; NaN where the DEM is (a gap counts as
        its row's mean elevation for its neighbours). The ``x`` dimension is one
        chunk (a shadow can run along a whole row), ``y`` keeps the DEM's chunks.

    Raises
    ------
    InputError
        ``look`` or ``incidence`` out of range, two ``names`` not given, the DEM has more than
        one band, or fewer than two columns.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> dem = np.zeros((1, 6)); dem[0, 3] = 90.0  # a 90 m ridge, 30 m pixels, looking east
    >>> dem = xr.DataArray(dem, dims=("y", "x"), coords={"x": 30.0 * np.arange(6)})
    >>> out = radar_geometry(dem)
    >>> out.sel(band="radar_shadow").values[0].tolist()  # 90 m · tan(35°) = 63 m behind it
    [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    >>> np.round(out.sel(band="local_incidence").values[0].astype(float), 1).tolist()  # layover
    [35.0, 35.0, -21.3, 35.0, 91.3, 35.0]
    """
    if look not in _LOOKS:
        raise InputError(f"look must be one of {_LOOKS}; got {look!r}")
    if isinstance(incidence, bool) or not 0.0 < float(incidence) < 90.0:
        raise InputError(f"incidence must be in (0, 90) degrees; got {incidence!r}")
    if len(names) != 2:
        raise InputError(f"names must give the two output bands; got {list(names)}")
    if "band" in dem.dims:
        if dem.sizes["band"] != 1:
            raise InputError(f"the DEM has {dem.sizes['band']} bands; expected one")
        dem = dem.isel(band=0, drop=True)
    if dem.sizes.get("x", 0) < 2 or "y" not in dem.dims:
        raise InputError(f"the DEM needs y and at least two x columns; got sizes {dict(dem.sizes)}")
    dem = dem.transpose("y", "x")
    x = np.asarray(dem["x"].values, dtype=np.float64) if "x" in dem.coords else np.arange(2.0)
    step = float(x[1] - x[0])
    flip = (look == "west") != (step < 0)
    args = (abs(step), float(incidence), flip)
    if dem.chunks is not None:
        rows = dem.data.rechunk({1: -1})  # whole rows: a shadow runs along the range
        data = rows.map_blocks(
            _radar_geometry_block, *args, dtype=np.float32, new_axis=0, chunks=((2,), *rows.chunks)
        )
    else:
        data = _radar_geometry_block(dem.values, *args)
    coords = {k: v for k, v in dem.coords.items() if set(v.dims) <= {"y", "x"}}
    out = xr.DataArray(data, dims=("band", "y", "x"), coords={**coords, "band": list(names)})
    out.attrs = {
        "bands": f"local incidence angle (degrees), 1 radar shadow; sensor looking "
        f"{look} at {float(incidence):g} degrees (layover where the angle is 0 or below)"
    }
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
