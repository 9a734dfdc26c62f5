"""Maps of one class (water, cloud, built-up) from several models, and their held-out scores.

A segmentation workflow maps a class with a network and judges it against cheap pixel
baselines fitted on the same training patches. These steps are the same whatever the class:

- :func:`labelled_pixels` and :func:`fit_pixel_baselines`: the patches' labelled pixels as a
  table, and Otsu thresholds of single bands plus gradient boosting fitted on it (computes);
- :func:`predict_maps`: every model applied to a cube, one band per model (lazy; a U-Net reads
  every block with its halo, :func:`xfusion.predict`);
- :func:`threshold_map`: a probability map as 1 (the class), 0 (the rest), NaN (no data);
- :func:`score_maps`: :func:`~xfusion.models.segmentation.segmentation_scores` of every band
  of a map against a reference, optionally only where every band has a value, so that a model
  and its baselines are compared on exactly the same pixels (eager);
- :func:`error_classes`: where a map agrees with the reference, adds the class, or misses it;
  :func:`plot_class_maps` draws the maps beside the reference and the errors of one of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import InputError
from xfusion.models.segmentation import segmentation_scores

__all__ = [
    "error_classes",
    "fit_pixel_baselines",
    "labelled_pixels",
    "plot_class_maps",
    "predict_maps",
    "score_maps",
    "threshold_map",
]


def labelled_pixels(patches: xr.Dataset) -> tuple[pd.DataFrame, np.ndarray]:
    """Every pixel of in-memory patches with a finite target: a table and the targets.

    Unlike :func:`xfusion.preprocess.holdout.patch_pixels`, pixels with missing inputs are kept
    (gradient boosting reads NaN features as they are).

    Parameters
    ----------
    patches : xarray.Dataset
        ``inputs`` ``(sample, band, y, x)`` and ``target`` ``(sample, y, x)`` in memory (from
        ``cube.xf.patches(labels, ...)``).

    Returns
    -------
    (pandas.DataFrame, numpy.ndarray)
        One row per labelled pixel, one column per band, and its target.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> inputs = (("sample", "band", "y", "x"), [[[[1.0, np.nan]], [[3.0, 4.0]]]])
    >>> target = (("sample", "y", "x"), [[[1.0, 0.0]]])
    >>> ds = xr.Dataset({"inputs": inputs, "target": target}, coords={"band": ["a", "b"]})
    >>> table, target = labelled_pixels(ds)
    >>> table.to_dict("list"), target.tolist()
    ({'a': [1.0, nan], 'b': [3.0, 4.0]}, [1.0, 0.0])
    """
    for name in ("inputs", "target"):
        if name not in patches:
            raise InputError(f"patches have no {name!r} variable; expected inputs and target")
    bands = [str(b) for b in patches["band"].values]
    inputs = patches["inputs"].transpose("sample", "y", "x", "band").values
    target = patches["target"].values.reshape(-1)  # xf: computes nothing (patches are in memory)
    labelled = np.isfinite(target)
    table = pd.DataFrame(inputs.reshape(-1, len(bands))[labelled], columns=bands)
    return table, target[labelled]


def fit_pixel_baselines(
    patches: xr.Dataset, threshold_bands: Sequence[str], *, seed: int = 0
) -> dict[str, Any]:
    """Fit Otsu on each of ``threshold_bands`` and gradient boosting on every band (computes).

    Both are fitted on the labelled pixels of the training patches (:func:`labelled_pixels`),
    the pixels a network is trained on; labels are 0/1.

    Returns
    -------
    dict
        ``otsu_<band>`` (:class:`~xfusion.models.baselines.ThresholdClassifier`, the direction
        learnt from the labels) per threshold band, and ``hgb`` (gradient boosting).

    Raises
    ------
    BandError
        A threshold band is not among the patches' bands.
    """
    from xfusion.models.baselines import ThresholdClassifier, fit_baselines
    from xfusion.validate import require_bands

    require_bands(patches["inputs"], threshold_bands, "patches", by="threshold_bands")
    table, target = labelled_pixels(patches)
    fitted = {f"otsu_{b}": ThresholdClassifier(b).fit(table[[b]], target) for b in threshold_bands}
    fitted["hgb"] = fit_baselines("segmentation", table, target, seed=seed)["hgb"]
    return fitted


def predict_maps(
    cube: xr.DataArray, models: Mapping[str, Any], *, halo: int | None = None
) -> xr.DataArray:
    """Apply every model to ``cube``: ``(band, y, x)`` with one band per model (lazy).

    A model reads the bands it was fitted on (``bands_`` of a U-Net, ``feature_names_in_`` of
    a pixel model); its first output band is kept (a U-Net segmenter's probability of the
    class, a pixel classifier's class). ``halo`` is passed to U-Nets only (``None``: the
    model's own).
    """
    if not models:
        raise InputError("predict_maps needs at least one model")
    maps = []
    for name, model in models.items():
        spatial = hasattr(model, "bands_")
        bands = list(model.bands_ if spatial else model.feature_names_in_)
        kwargs = {"halo": halo} if spatial else {}
        proba = cube.sel(band=bands).xf.predict(model, **kwargs)
        maps.append(proba.isel(band=0, drop=True).expand_dims(band=[name]))
    return xr.concat(maps, dim="band")


def threshold_map(probability: xr.DataArray, threshold: float = 0.5) -> xr.DataArray:
    """Return 1 where ``probability > threshold``, 0 elsewhere, NaN where it is NaN (lazy).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> threshold_map(xr.DataArray([0.2, 0.7, np.nan])).values.tolist()
    [0.0, 1.0, nan]
    """
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold must be strictly between 0 and 1; got {threshold!r}")
    out = xr.where(probability.notnull(), probability > threshold, np.nan).astype(np.float32)
    out.attrs = {"classes": "1 class, 0 rest, NaN no data", "threshold": threshold}
    return out


def score_maps(
    maps: xr.DataArray, reference: Any, *, common: bool = False
) -> dict[str, dict[str, float]]:
    """Scores of every band of ``maps`` against ``reference`` (eager).

    Parameters
    ----------
    maps : xarray.DataArray
        ``(band, y, x)`` in memory, one band per map, values 1, 0 or NaN.
    reference : array-like
        ``(y, x)`` labels, 1, 0 or NaN (no data, and pixels not scored).
    common : bool
        Score only the pixels where every band has a value: a model and its baselines on the
        same pixels.

    Returns
    -------
    dict
        Per band name, :func:`~xfusion.models.segmentation.segmentation_scores`.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> maps = xr.DataArray([[[1.0, 0.0, 1.0]], [[1.0, 1.0, np.nan]]], dims=("band", "y", "x"),
    ...                     coords={"band": ["unet", "otsu"]})
    >>> score_maps(maps, [[1.0, 0.0, 0.0]], common=True)["unet"]["n"]
    2
    """
    values = np.asarray(maps.transpose("band", ...).values, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if values.shape[1:] != reference.shape:
        raise InputError(f"maps are {values.shape[1:]} but the reference is {reference.shape}")
    if common:
        reference = np.where(np.isfinite(values).all(axis=0), reference, np.nan)
    names = [str(b) for b in maps["band"].values]
    return {name: segmentation_scores(m, reference) for name, m in zip(names, values, strict=True)}


def error_classes(prediction: Any, reference: Any) -> np.ndarray:
    """0 where a binary map agrees with the reference, 1 false class, 2 missed class (eager).

    NaN where either is NaN: the errors map of a segmentation figure.

    Examples
    --------
    >>> import numpy as np
    >>> error_classes([1.0, 1.0, 0.0, np.nan], [1.0, 0.0, 1.0, 0.0]).tolist()
    [0.0, 1.0, 2.0, nan]
    """
    p, r = np.asarray(prediction, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if p.shape != r.shape:
        raise InputError(f"prediction is {p.shape} but the reference is {r.shape}")
    ok = np.isfinite(p) & np.isfinite(r)
    return np.where(ok, np.where(p == r, 0.0, np.where(p == 1, 1.0, 2.0)), np.nan)


def plot_class_maps(
    maps: Sequence[tuple[str, Any]],
    reference: Any,
    *,
    inputs: Sequence[tuple[str, Any, Mapping[str, Any]]] = (),
    errors_of: Any = None,
    holdout: Any = None,
    reference_title: str = "labels (blank: no data)",
    colors: Sequence[str] = ("#d9c89e", "#2166ac"),
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Draw input panels, the reference, every class map and the errors of one map in a row.

    Parameters
    ----------
    maps : sequence of (title, array)
        ``(y, x)`` class maps in memory: 1 the class, 0 the rest, NaN no data.
    reference : array-like
        ``(y, x)`` labels of the same values.
    inputs : sequence of (title, image, imshow keywords)
        Panels drawn first, as :func:`xfusion.viz.plot_map_row` takes them.
    errors_of : array-like, optional
        A map whose :func:`error_classes` against ``reference`` is the last panel (grey
        agreement, red false class, blue missed class).
    holdout : array-like of bool, optional
        ``(y, x)`` held-out mask of an eastern strip: a dashed line marks its first column.
    reference_title : str
        Title of the reference panel.
    colors : (str, str)
        Colours of the rest (0) and of the class (1).
    title : str, optional
        Title of the figure.
    path : path, optional
        Write the figure as a PNG there.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.colors import ListedColormap

    from xfusion.viz import plot_map_row

    if len(colors) != 2:
        raise InputError(f"colors must be two colours (rest, class); got {list(colors)}")
    classes = {"cmap": ListedColormap(list(colors)), "vmin": 0, "vmax": 1}
    panels = [*inputs, (reference_title, reference, classes)]
    panels += [(name, values, classes) for name, values in maps]
    if errors_of is not None:
        errors = {"cmap": ListedColormap(["#bdbdbd", "#d7301f", "#2c7bb6"]), "vmin": 0, "vmax": 2}
        panels.append(("errors: grey ok, red false, blue missed",
                       error_classes(errors_of, reference), errors))  # fmt: skip
    marker = None if holdout is None else int(np.argmax(np.asarray(holdout, bool).any(axis=0)))
    return plot_map_row(panels, title=title, marker_x=marker, path=path)
