"""Learning a fine-resolution map from a coarse product observed everywhere (super-resolution).

The steps of a model that maps fine features (Landsat at 30 m) to a coarse product resampled
onto the fine grid (VIIRS night lights), in the order a workflow calls them:

1. :func:`area_labels`: the label of every pixel for per-area target standardisation — each
   group of the scene (a city) split into its training part, its evaluation part and the rest;
2. :func:`training_patches`: training and validation patches from the training box only (the
   validation draw picks the best epoch, so it never comes from the evaluation box), with
   their area labels as a ``region`` variable;
3. :func:`area_statistics`: the target's mean and standard deviation over whole training
   areas (computes), the statistics the prediction later takes from the coarse product;
4. :func:`predict_map`: the prediction over the whole grid, blockwise (lazy);
5. :func:`coarse_correction`: the map made consistent with the coarse product (lazy).

Scores on a held-out box are :func:`xfusion.models.scoring.score_windows`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import xarray as xr

import xfusion.accessor  # noqa: F401  (registers ``.xf``)
from xfusion.errors import GridError, InputError
from xfusion.preprocess.holdout import window

__all__ = [
    "REGION",
    "area_labels",
    "area_statistics",
    "coarse_correction",
    "predict_map",
    "training_patches",
]

#: Name of the area labels (:func:`area_labels`) and of their variable in the patches.
REGION = "region"


def area_labels(
    like: xr.DataArray,
    train_box: Sequence[float],
    eval_box: Sequence[float],
    groups: xr.DataArray | None = None,
) -> xr.DataArray:
    """Area label of every pixel of ``like``'s grid: ``3 * group + part`` (lazy).

    ``part`` is 1 inside ``train_box``, 2 inside ``eval_box`` (pixel centres strictly inside)
    and 0 elsewhere; ``group`` is the scene's group of every pixel (e.g. its city), or 0
    everywhere without ``groups``. A U-Net with ``target_standardize="per_region"`` learns each
    training label's target statistics and de-standardises every label's map with the coarse
    product's statistics over that label's pixels.

    Parameters
    ----------
    like : xarray.DataArray
        A cube on the grid (``x`` and ``y`` coordinates are read, not its data).
    train_box, eval_box : (left, bottom, right, top)
        The training and evaluation boxes in the grid's CRS.
    groups : xarray.DataArray, optional
        ``(y, x)`` integer-valued groups with the grid's shape.

    Returns
    -------
    xarray.DataArray
        ``(y, x)`` float32 labels named :data:`REGION`.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> coords = {"y": [0.5], "x": [0.5, 1.5, 2.5, 3.5]}
    >>> like = xr.DataArray(np.zeros((1, 4)), dims=("y", "x"), coords=coords)
    >>> area_labels(like, (0, 0, 2, 1), (2, 0, 3, 1)).values.tolist()
    [[1.0, 1.0, 2.0, 0.0]]
    >>> groups = xr.DataArray([[0, 1, 1, 1]], dims=("y", "x"))
    >>> area_labels(like, (0, 0, 2, 1), (2, 0, 3, 1), groups).values.tolist()
    [[1.0, 4.0, 5.0, 3.0]]
    """
    x, y = like.x, like.y

    def inside(box: Sequence[float]) -> xr.DataArray:
        left, bottom, right, top = box
        return (x > left) & (x < right) & (y > bottom) & (y < top)

    part = xr.where(inside(eval_box), 2.0, xr.where(inside(train_box), 1.0, 0.0))
    part = part.transpose("y", "x").astype("float32")
    if groups is None:
        return part.rename(REGION)
    if groups.shape != part.shape:
        raise GridError(f"the groups are {groups.shape} px; expected the grid's {part.shape}")
    groups = xr.DataArray(groups.data, dims=("y", "x"), coords=part.coords)
    return (3.0 * groups.astype("float32") + part).rename(REGION)


def training_patches(
    features: xr.DataArray,
    target: xr.DataArray,
    train_box: Sequence[float],
    *,
    size: int,
    n_patches: int,
    n_validation_patches: int = 0,
    seed: int = 0,
    labels: xr.DataArray | None = None,
    target_band: str = "target",
) -> tuple[xr.Dataset, xr.Dataset | None]:
    """Training and validation patches (another draw, ``seed + 1``), both from ``train_box``.

    This computes (:func:`xfusion.patches`). The validation patches choose a model's best
    epoch, so they never come from the evaluation region, which stays unseen until scoring.

    Parameters
    ----------
    features : xarray.DataArray
        ``(band, y, x)`` inputs.
    target : xarray.DataArray
        ``(band, y, x)`` target with one band on the same grid; named ``target_band`` in the
        patches.
    train_box : (left, bottom, right, top)
        Where every patch lies.
    size, n_patches, n_validation_patches, seed : int
        Patch side, the two draws' sizes (0 validation patches: no validation set) and seed.
    labels : xarray.DataArray, optional
        ``(y, x)`` area labels (:func:`area_labels`), cut with the patches into a
        :data:`REGION` variable ``(sample, y, x)`` that is not an input.
    target_band : str
        Band name of the target in the patches (and in a model trained on them).

    Returns
    -------
    (xarray.Dataset, xarray.Dataset or None)
        Training and validation patches.
    """
    if target.sizes.get("band", 1) != 1:
        raise InputError(f"the target must have one band; got {target.sizes['band']}")
    if n_patches < 1 or n_validation_patches < 0:
        raise InputError(
            f"n_patches must be >= 1 and n_validation_patches >= 0; got {n_patches}, "
            f"{n_validation_patches}"
        )
    parts = [features, target.assign_coords(band=[target_band])]
    if labels is not None:
        # a band like the target's (same band coordinates), split off again below
        data = labels.data[None].astype(target.dtype)
        parts.insert(1, target.assign_coords(band=[REGION]).copy(data=data))
    stack = xr.concat(parts, dim="band")
    draws = [(n_patches, seed), (n_validation_patches, seed + 1)]
    train, val = (
        stack.xf.patches(target_band, size=size, n=n, seed=draw, regions=[tuple(train_box)])
        if n
        else None
        for n, draw in draws
    )
    if labels is not None:
        train, val = (_split_region(ds) if ds is not None else None for ds in (train, val))
    return train, val


def _split_region(patches: xr.Dataset) -> xr.Dataset:
    """Move the ``region`` band of the inputs into a ``region`` variable ``(sample, y, x)``."""
    region = patches["inputs"].sel(band=REGION, drop=True)
    return patches.drop_sel(band=REGION).assign(region=region)


def area_statistics(
    labels: xr.DataArray, target: xr.DataArray, train_box: Sequence[float]
) -> dict[str, Any]:
    """Target mean and std of every area inside ``train_box`` (whole areas); computes.

    The statistics a U-Net with ``target_standardize="per_region"`` standardises its training
    patches with (``fit(..., target_statistics=)``): the same ones its prediction takes from
    the coarse product over each area, so training and map are scaled alike
    (:func:`xfusion.models.estimators.target_region_statistics`).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> coords = {"y": [0.5], "x": [0.5, 1.5, 2.5]}
    >>> labels = xr.DataArray([[1.0, 1.0, 2.0]], dims=("y", "x"), coords=coords)
    >>> target = xr.DataArray([[[1.0, 3.0, 9.0]]], dims=("band", "y", "x"), coords=coords)
    >>> area_statistics(labels, target, (0, 0, 2, 1))
    {'1': {'offset': [2.0], 'scale': [1.0]}}
    """
    from xfusion.models.estimators import target_region_statistics

    return target_region_statistics(window(target, train_box), window(labels, train_box))


def predict_map(
    model: Any,
    features: xr.DataArray,
    *,
    chunks: int,
    halo: int | None = None,
    labels: xr.DataArray | None = None,
    reference: xr.DataArray | None = None,
    band: str = "target",
) -> xr.DataArray:
    """Return a model's map over the whole grid, blockwise (a U-Net with a halo); lazy.

    A U-Net with ``target_standardize="per_region"`` takes each area's target scale from
    ``reference`` (the coarse product on the fine grid) over that area's ``labels``: those
    statistics are computed first, the map stays lazy.

    Parameters
    ----------
    model : fitted estimator
        A U-Net (``inference_state``) or a pixel model (``cube.xf.predict``).
    features : xarray.DataArray
        ``(band, y, x)`` inputs, rechunked to ``chunks`` × ``chunks`` blocks with every band.
    chunks : int
        Block side in pixels.
    halo : int, optional
        Context read around every block by a U-Net (default the model's).
    labels, reference : xarray.DataArray, optional
        Area labels and the ``(band, y, x)`` reference, required by a per-area U-Net.
    band : str
        Band name of the map.

    Returns
    -------
    xarray.DataArray
        ``(band, y, x)`` float32 map with one band ``band``.
    """
    cube = features.chunk({"band": -1, "y": chunks, "x": chunks})
    if getattr(model, "target_standardize", "global") == "per_region":
        if labels is None or reference is None:
            raise InputError(
                "a U-Net with target_standardize='per_region' predicts with the areas' labels "
                "and the reference (the coarse product on the grid) that scales them"
            )
        pred = model.predict(
            cube, regions=labels, target_reference=reference.isel(band=0), halo=halo
        )
    elif hasattr(model, "inference_state"):
        pred = cube.xf.predict(model, halo=halo)
    else:
        pred = cube.xf.predict(model)
    return pred.assign_coords(band=[band]).astype("float32")


def coarse_correction(
    prediction: xr.DataArray, target: xr.DataArray, coarse: Any, resampling: str = "bilinear"
) -> xr.DataArray:
    """``prediction`` made consistent with a coarse product observed everywhere; lazy.

    ``prediction + resample(coarse_value − average(prediction))``: the map's average over
    every coarse pixel (``coarse``, a grid or a cube on it), resampled back onto the fine grid
    with ``resampling``, is swapped for the coarse product's own resampled the same way
    (``target``), so the result is the coarse product on the fine grid plus the model's
    detail within the coarse pixels.

    Parameters
    ----------
    prediction, target : xarray.DataArray
        ``(band, y, x)`` map and the coarse product resampled onto the same fine grid with
        ``resampling``.
    coarse : GeoBox or xarray.DataArray
        The coarse product's grid.
    resampling : str
        How ``target`` was resampled onto the fine grid (``"nearest"``, ``"bilinear"``,
        ``"cubic"``).

    Examples
    --------
    >>> import numpy as np
    >>> from xfusion.grids import assign_grid, grid
    >>> fine, coarse = (grid((0, 0, 4, 4), "EPSG:32630", res) for res in (1.0, 2.0))
    >>> values = xr.DataArray(np.arange(16.0).reshape(1, 4, 4), dims=("band", "y", "x"))
    >>> pred = assign_grid(values, fine)
    >>> out = coarse_correction(pred, pred * 0 + 3.0, coarse, "nearest")
    >>> out.values[0].tolist()  # 3 on average over every 2 x 2 pixels, the detail kept
    [[0.5, 1.5, 0.5, 1.5], [4.5, 5.5, 4.5, 5.5], [0.5, 1.5, 0.5, 1.5], [4.5, 5.5, 4.5, 5.5]]
    """
    if prediction.shape != target.shape:
        raise GridError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    back = prediction.xf.resample(coarse, "average").xf.resample(prediction, resampling)
    dtype = prediction.dtype
    data = prediction.data + target.data.astype(dtype) - back.data.astype(dtype)
    return prediction.copy(data=data).rename(prediction.name)
