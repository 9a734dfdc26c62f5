"""Fine-grid features of a coarse field, for downscaling it with fine auxiliary data.

Downscaling predicts a coarse field (SIF at 5 km) on the grid of fine auxiliary data
(vegetation indices at 1 km). :func:`coarse_features` builds the network's inputs on the fine
grid: the fine bands, the coarse field interpolated bilinearly (:func:`xfusion.resample`) and its
Local Binary Patterns (:func:`xfusion.lbp`, computed on the coarse grid, then repeated over each
coarse pixel), and the coarse field on the fine grid by nearest neighbour, each fine pixel
carrying the value of its coarse pixel (the target of coarse supervision). Lazy.
"""

from __future__ import annotations

from collections.abc import Mapping

import xarray as xr

from xfusion.preprocess.resample import resample
from xfusion.preprocess.texture import lbp

__all__ = ["coarse_features"]


def coarse_features(
    fine: xr.DataArray,
    coarse: xr.DataArray,
    *,
    lbp_points: int = 8,
    lbp_radius: float = 1.0,
    chunks: Mapping[str, int] | None = None,
) -> tuple[xr.DataArray, xr.DataArray]:
    """Return the fine-grid features of a coarse field and the coarse field on the fine grid.

    Parameters
    ----------
    fine : DataArray
        Fine auxiliary bands ``(..., band, y, x)``: the grid of the result.
    coarse : DataArray
        The coarse field ``(..., band, y, x)`` on a grid that ``fine``'s refines.
    lbp_points, lbp_radius
        Circle samples and radius (coarse pixels) of the Local Binary Patterns.
    chunks : mapping, optional
        Spatial chunks of the results (``{"y": 60, "x": 60}``); the features are one chunk
        along ``band``. Default: left as they come.

    Returns
    -------
    (DataArray, DataArray)
        ``features``: the bands of ``fine``, then ``"<band>_bilinear"`` and ``"<band>_lbp"`` for
        every band of ``coarse`` (``attrs["coarse_band"]``: the first); ``target``: ``coarse``
        resampled to the fine grid by nearest neighbour.

    Examples
    --------
    >>> import xfusion as xf
    >>> scene = xf.datasets.synthetic_scene("downscale", size=40)
    >>> features, target = coarse_features(scene["modis"], scene["tropomi"])
    >>> features.band.values.tolist(), target.shape == scene["modis"].isel(band=[0]).shape
    (['NDVI', 'EVI', 'SIF743_bilinear', 'SIF743_lbp'], True)
    """
    names = [str(b) for b in coarse.band.values]
    bilinear = resample(coarse, fine, "bilinear").assign_coords(
        band=[f"{b}_bilinear" for b in names]
    )
    texture = resample(lbp(coarse, lbp_points, lbp_radius), fine, "nearest")
    features = xr.concat([fine, bilinear, texture], dim="band", coords="minimal", compat="override")
    target = resample(coarse, fine, "nearest")
    if chunks is not None:
        features, target = features.chunk({"band": -1, **chunks}), target.chunk(dict(chunks))
    features.attrs = {"coarse_band": names[0]}
    return features.rename("features"), target.rename("target")
