"""Texture features: local binary patterns computed blockwise with a halo."""

from __future__ import annotations

import math

import dask.array
import numpy as np
import xarray as xr

from xfusion._kernels.lbp import lbp_uniform
from xfusion.errors import InputError

__all__ = ["lbp"]


def lbp(da: xr.DataArray, points: int = 8, radius: float = 1) -> xr.DataArray:
    """Rotation-invariant uniform local binary patterns of every (y, x) plane.

    Equal, pixel for pixel, to ``skimage.feature.local_binary_pattern(plane, points, radius,
    method="uniform")`` applied to each whole plane (values are compared in float64; pixels
    outside the cube are read as 0, as scikit-image does), whatever the chunking: chunked input
    is processed blockwise with ``map_overlap`` and a halo of ``ceil(radius) + 1`` pixels.

    Codes run from ``0`` to ``points``: the number of neighbours not darker than the centre for
    uniform patterns (at most two 0/1 transitions around the circle); ``points + 1`` marks the
    non-uniform ones. A NaN pixel gives NaN; a NaN neighbour counts as darker than the centre.

    Parameters
    ----------
    da : xarray.DataArray
        Any array with ``y`` and ``x`` dims; every other dim (``time``, ``band``) is kept.
    points : int
        Number of circle samples ``P`` (at least 1).
    radius : float
        Circle radius ``R`` in pixels (positive).

    Returns
    -------
    xarray.DataArray
        float32 codes, same dims, coordinates and chunks as ``da``; a ``band`` coordinate is
        renamed ``"<band>_lbp"``. Lazy for chunked input.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> img = xr.DataArray(np.arange(9.0).reshape(1, 3, 3), dims=("band", "y", "x"),
    ...                    coords={"band": ["B04"]})
    >>> out = lbp(img, points=8, radius=1)
    >>> out.band.values.tolist()
    ['B04_lbp']
    >>> out.values[0]
    array([[8., 4., 2.],
           [3., 4., 2.],
           [1., 1., 0.]], dtype=float32)
    """
    if not isinstance(da, xr.DataArray):
        raise InputError(f"lbp expects an xarray.DataArray; got {type(da).__name__}")
    missing = [d for d in ("y", "x") if d not in da.dims]
    if missing:
        raise InputError(f"lbp needs 'y' and 'x' dims; cube has dims {list(da.dims)}")
    if isinstance(points, bool) or not isinstance(points, int | np.integer) or points < 1:
        raise InputError(f"points must be an integer >= 1; got {points!r}")
    try:
        radius = float(radius)
    except (TypeError, ValueError) as err:
        raise InputError(f"radius must be a positive number of pixels; got {radius!r}") from err
    if not (radius > 0 and math.isfinite(radius)):
        raise InputError(f"radius must be a positive number of pixels; got {radius!r}")
    points = int(points)

    dims = da.dims
    other = [d for d in dims if d not in ("y", "x")]
    arr = da.transpose(*other, "y", "x")
    data = arr.data
    if isinstance(data, dask.array.Array):
        ndim = data.ndim
        spatial = (ndim - 2, ndim - 1)
        halo = math.ceil(radius) + 1
        # A halo wider than the axis is cut to the axis: the kernel reads beyond it as 0 anyway.
        depth = {ax: (min(halo, data.shape[ax]) if ax in spatial else 0) for ax in range(ndim)}
        # dask#11580: map_overlap gives wrong answers when a chunk is thinner than the halo;
        # merge thin chunks for the computation and give the caller's chunks back afterwards.
        original_chunks = data.chunks
        data = data.rechunk({ax: _merge_thin_chunks(data.chunks[ax], depth[ax]) for ax in spatial})
        out = data.map_overlap(
            _lbp_block,
            depth=depth,
            # scikit-image reads pixels outside the image as 0.
            boundary={ax: (0 if ax in spatial else "none") for ax in range(ndim)},
            dtype=np.float32,
            meta=np.array((), dtype=np.float32),
            points=points,
            radius=radius,
            halo=(depth[ndim - 2], depth[ndim - 1]),
            starts=tuple(tuple(np.cumsum((0, *data.chunks[ax]))[:-1].tolist()) for ax in spatial),
        )
        if out.chunks != original_chunks:
            out = out.rechunk(original_chunks)
    else:
        out = lbp_uniform(data, points, radius)
    result = arr.copy(data=out).transpose(*dims)
    if "band" in result.coords and result["band"].dims == ("band",):
        result = result.assign_coords(band=[f"{b}_lbp" for b in result.band.values])
    result.name = f"{da.name}_lbp" if da.name is not None else None
    result.attrs = {**da.attrs, "lbp_points": points, "lbp_radius": radius}
    return result


def _merge_thin_chunks(chunks: tuple[int, ...], minimum: int) -> tuple[int, ...]:
    """Merge neighbouring chunks until each is at least ``minimum`` long (or the whole axis)."""
    if all(c >= minimum for c in chunks):
        return chunks
    merged: list[int] = []
    for c in chunks:
        if merged and merged[-1] < minimum:
            merged[-1] += c
        else:
            merged.append(c)
    if len(merged) > 1 and merged[-1] < minimum:
        last = merged.pop()
        merged[-1] += last
    return tuple(merged)


def _lbp_block(block, points, radius, halo, starts, block_info=None):
    # Every block arrives with its halo on both sides (constant padding at the cube's edges), so
    # its first pixel is ``halo`` before the start of its chunk.
    iy, ix = block_info[0]["chunk-location"][-2:]
    origin = (starts[0][iy] - halo[0], starts[1][ix] - halo[1])
    return lbp_uniform(block, points, radius, origin=origin)
