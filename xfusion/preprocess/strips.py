"""Training, validation and held-out strips of a scene, in whole coarse pixels.

A model trained against a coarse field is scored where it never trained, and no coarse pixel
may straddle two regions (its value would leak across). :func:`strip_regions` draws the map:
an eastern strip held out for evaluation, a southern strip of the rest for validation (the
best epoch is chosen there) and the training region, each a whole number of coarse pixels.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from xfusion.errors import InputError

__all__ = ["HELDOUT", "TRAIN", "VALIDATION", "strip_regions"]

#: Values of the map of :func:`strip_regions`.
TRAIN, VALIDATION, HELDOUT = 0, 1, 2


def strip_regions(
    like: xr.DataArray,
    factor: int,
    *,
    holdout_fraction: float,
    validation_fraction: float,
    patch_size: int | None = None,
) -> xr.DataArray:
    """Return the ``(y, x)`` map of the regions: 0 train, 1 validation, 2 held out (numpy).

    Parameters
    ----------
    like : DataArray
        Cube on the fine grid (only its ``y``/``x`` coordinates and ``spatial_ref`` are read).
    factor : int
        Fine pixels per coarse pixel along each side.
    holdout_fraction : float
        Fraction of the width held out (eastern strip; rounded to coarse pixels, at least one).
    validation_fraction : float
        Fraction of the height of the rest used for validation (southern strip, likewise).
    patch_size : int, optional
        Side (fine pixels) of the patches cut in the training and validation regions: a
        multiple of ``factor`` that must fit in both.

    Returns
    -------
    DataArray
        int8 ``(y, x)`` map on ``like``'s grid.

    Raises
    ------
    InputError
        A scene too small for the strips, or patches that are not whole coarse pixels or do
        not fit.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> like = xr.DataArray(np.zeros((8, 12)), dims=("y", "x"))
    >>> strip_regions(like, 2, holdout_fraction=0.34, validation_fraction=0.25).values[::2, ::2]
    array([[0, 0, 0, 0, 2, 2],
           [0, 0, 0, 0, 2, 2],
           [0, 0, 0, 0, 2, 2],
           [1, 1, 1, 1, 2, 2]], dtype=int8)
    """
    ny, nx = like.sizes["y"], like.sizes["x"]
    cy, cx = ny // factor, nx // factor
    held = max(1, round(holdout_fraction * cx))
    val = max(1, round(validation_fraction * cy))
    if held >= cx or val >= cy:
        raise InputError(
            f"the scene is {cy}×{cx} coarse pixels: too small for a held-out strip of {held} "
            f"and a validation strip of {val} coarse pixels"
        )
    if patch_size is not None:
        if patch_size % factor:
            raise InputError(
                f"patch_size must be a multiple of the resolution factor {factor}; got {patch_size}"
            )
        need = patch_size // factor
        if cx - held < need or val < need or cy - val < need:
            raise InputError(
                f"patch_size {patch_size} ({need} coarse px) does not fit the training "
                f"region ({cy - val}×{cx - held} coarse px) or the validation strip ({val}×"
                f"{cx - held}); use smaller patches or a larger scene"
            )
    regions = np.full((ny, nx), TRAIN, dtype=np.int8)
    regions[(cy - val) * factor :, :] = VALIDATION
    regions[:, (cx - held) * factor :] = HELDOUT
    coords = {"y": like.y, "x": like.x} if "y" in like.coords else {}
    if "spatial_ref" in like.coords:
        coords["spatial_ref"] = like.spatial_ref
    return xr.DataArray(
        regions,
        dims=("y", "x"),
        coords=coords,
        attrs={"values": "0 train, 1 validation, 2 held out"},
    )
