"""Multitemporal cloud masking: background forecasts from clear lags, clusters of the change.

The pieces of the multitemporal cloud-masking workflow for Landsat 8, on lazy xarray cubes:

1. :func:`split_lags`: a lag stack (:func:`xfusion.lags`) of one image into the image, its
   ``lag_1`` … ``lag_3`` cubes and the QA cloud flags;
2. :func:`training_weights`: the β-weighted *lag set* (inputs ``(lag_2, lag_3)``, output
   ``lag_1``, weight ``β/n``) and *image set* (inputs ``(lag_1, lag_2)``, output the image,
   weight ``(1 − β)/m``, outside the grown QA cloud mask), both outside held-out tiles;
3. :func:`fit_forecasts`: ``Ridge`` and Nyström ``KernelRidge`` fitted on both sets with those
   sample weights, which minimises ``β/n‖PₓW − P_y‖² + (1−β)/m‖EₓW − E_y‖² + λ‖W‖²``;
   :func:`forecast` predicts the cloud-free image lazily from its two most recent lags;
4. :func:`fit_clusters`: k-means of the image − forecast differences on a pixel sample, clusters
   labelled :data:`CLOUD` when they brighten the visible bands, :data:`SHADOW` when they darken
   them; :func:`cluster_masks` applies them lazily;
5. :func:`output_cubes` names every lazy result of one image; :func:`mask_scores` and
   :func:`mask_baselines` score the masks and forecasts once computed, against Otsu
   thresholds and persistence on the same pixels; :func:`plot_masks` and
   :func:`plot_forecast_errors` draw them.

Steps 2, 3 and 4 compute (pixel counts, fitting); the others are lazy or work on computed cubes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import InputError
from xfusion.grids import plain_coords
from xfusion.models.baselines import ThresholdClassifier, score_predictions
from xfusion.models.evaluation import agreement, holdout_tiles
from xfusion.models.kmeans import KMeans, sample_pixels
from xfusion.preprocess.lags import cloud_fraction
from xfusion.preprocess.mask import flags_set

__all__ = [
    "CLASS_NAMES",
    "CLEAR",
    "CLOUD",
    "FORECAST_MODELS",
    "SHADOW",
    "cloudiest",
    "cluster_masks",
    "fit_clusters",
    "fit_forecasts",
    "forecast",
    "lag_features",
    "lag_stack",
    "mask_baselines",
    "mask_scores",
    "output_cubes",
    "plot_forecast_errors",
    "plot_masks",
    "split_lags",
    "training_weights",
    "true_colour",
    "visible_bands",
]

log = logging.getLogger(__name__)

#: Class values of the cloud-mask maps.
CLEAR, CLOUD, SHADOW = 0, 1, 2
CLASS_NAMES = {CLEAR: "clear", CLOUD: "cloud", SHADOW: "shadow"}
#: The background forecasts: linear ridge and RBF kernel ridge.
FORECAST_MODELS = ("ridge", "kernel")


def cloudiest(stacked: xr.DataArray, qa_band: str, cloud_bits: list[int]) -> xr.DataArray:
    """Keep the candidate target of a lag stack with the largest QA cloud fraction (computes)."""
    qa = stacked.sel(band=qa_band, drop=True)
    flags = flags_set(stacked, qa_band, cloud_bits).where(qa.notnull())
    score = cloud_fraction(stacked, flags)
    (values,) = dask.compute(score.data)  # xf: computes the candidates' QA cloud fractions
    return stacked.isel(time=[int(np.nanargmax(values))])


def lag_stack(
    reflectance: xr.DataArray,
    qa: xr.DataArray,
    *,
    max_lags: int,
    max_cloud: float,
    qa_lag_bits: tuple[int, ...],
    qa_cloud_bits: tuple[int, ...],
    target: str | None = None,
    persist: bool = False,
) -> dict[str, Any]:
    """Stack one image with its ``max_lags`` most recent earlier clear images, split by role.

    ``reflectance`` ``(time, band, y, x)`` and its quality band ``qa`` (one band) are stacked
    by :func:`xfusion.lags`: a lag is clear when at most ``max_cloud`` of its valid pixels have
    a ``qa_lag_bits`` flag. The image is ``target`` (an ISO date) or else the candidate with
    the most ``qa_cloud_bits`` flags (:func:`cloudiest`, computes); ``persist`` keeps the stack
    in memory, so the sources are read once.

    Returns
    -------
    dict
        :func:`split_lags`'s pieces of the stack.
    """
    qa_band = str(qa.band.values[0])
    lag_flags = flags_set(qa, qa_band, list(qa_lag_bits)).where(
        qa.isel(band=0, drop=True).notnull()
    )
    # both sides keep their per-band coordinates (band_kind, band_scale), which concat needs
    both = xr.concat([reflectance, qa], dim="band")
    stacked = both.xf.lags(max_lags, cloud_score=lag_flags, max_cloud=max_cloud, targets=target)
    if target is None:
        stacked = cloudiest(stacked, qa_band, list(qa_cloud_bits))
    stacked = stacked.isel(time=0)
    if persist and stacked.chunks is not None:
        stacked = stacked.persist()
    bands = [str(b) for b in reflectance.band.values]
    return split_lags(stacked, bands, qa_band, list(qa_cloud_bits))


def split_lags(
    stacked: xr.DataArray, bands: list[str], qa_band: str, cloud_bits: list[int]
) -> dict[str, Any]:
    """Split one image's lag stack into named lazy pieces.

    Returns ``time``, ``lag_times`` (ISO strings), ``image`` ``(band, y, x)``, ``lags``
    (``{1: lag_1, 2: …, 3: …}`` with the image's band names) and ``qa_cloud`` (the QA
    ``cloud_bits`` flags of the image).
    """

    def lag(k: int) -> xr.DataArray:
        return stacked.sel(band=[f"{b}_lag_{k}" for b in bands]).assign_coords(band=bands)

    qa_cloud = flags_set(stacked, qa_band, cloud_bits)
    return {
        "time": stacked.time.values,
        "lag_times": [str(t) for t in next(iter(stacked.attrs["lag_times"].values()))],
        "image": stacked.sel(band=bands).rename("image"),
        "lags": {k: lag(k) for k in range(1, 4)},
        "qa_cloud": qa_cloud.rename("qa_cloud"),
    }


def training_weights(
    stack: dict[str, Any],
    *,
    beta: float,
    dilation_radius: int,
    holdout_tile: int,
    holdout_fraction: float,
    seed: int = 0,
) -> dict[str, Any]:
    """β/n and (1 − β)/m sample weights of the lag and image sets (NaN = not a training pixel).

    ``stack`` is :func:`split_lags`'s. Random ``holdout_tile`` tiles covering
    ``holdout_fraction`` (``seed``) are left out of both sets, and the QA cloud mask grown by
    ``dilation_radius`` out of the image set. Computes the two pixel counts ``n`` and ``m``
    (one small compute); :class:`~xfusion.errors.InputError` if either is zero.

    Returns
    -------
    dict
        ``holdout`` (boolean map), ``lag`` and ``image`` (weight maps), ``n`` and ``m``.
    """
    lags, image = stack["lags"], stack["image"]
    holdout = holdout_tiles(image, holdout_tile, holdout_fraction, seed=seed)
    if image.chunks is not None:
        holdout = holdout.chunk(dict(zip(("y", "x"), image.chunks[1:], strict=True)))
    recent = lags[1].notnull().all("band") & lags[2].notnull().all("band")
    lag_ok = recent & lags[3].notnull().all("band") & ~holdout
    grown = stack["qa_cloud"].xf.dilate(dilation_radius)
    image_ok = recent & image.notnull().all("band") & ~grown & ~holdout
    n, m = dask.compute(lag_ok.sum().data, image_ok.sum().data)  # xf: computes the set sizes
    n, m = int(n), int(m)
    if n == 0 or m == 0:
        raise InputError(
            f"no training pixels: {n} in the lag set and {m} clear image pixels outside the "
            f"QA cloud mask grown by {dilation_radius} px and the held-out tiles"
        )
    nan = np.float32(np.nan)
    weight_lag = xr.where(lag_ok, np.float32(beta / n), nan)
    weight_image = xr.where(image_ok, np.float32((1 - beta) / m), nan)
    return {"holdout": holdout, "lag": weight_lag, "image": weight_image, "n": n, "m": m}


def lag_features(first: xr.DataArray, second: xr.DataArray, bands: list[str]) -> xr.DataArray:
    """Stack forecast inputs: the more recent image, then the one before, as named bands.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> lag = xr.DataArray(np.zeros((2, 3, 3)), dims=("band", "y", "x"),
    ...                    coords={"band": ["B1", "B2"]})
    >>> lag_features(lag, lag + 1, ["B1", "B2"]).band.values.tolist()
    ['B1_lag_1', 'B2_lag_1', 'B1_lag_2', 'B2_lag_2']
    """
    names = [f"{b}_lag_1" for b in bands] + [f"{b}_lag_2" for b in bands]
    return plain_coords(xr.concat([first, second], dim="band").assign_coords(band=names))


def fit_forecasts(
    stack: dict[str, Any],
    weights: dict[str, Any],
    bands: list[str],
    *,
    ridge_alpha: float,
    kernel_alpha: float,
    kernel_gamma: float,
    kernel_sampling_factor: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the linear (``"ridge"``) and kernel (``"kernel"``) forecasts on both sets (computes).

    ``stack`` is :func:`split_lags`'s and ``weights`` :func:`training_weights`'; the kernel
    ridge uses ``kernel_sampling_factor`` of the training pixels as Nyström landmarks (``seed``).
    """
    from xfusion.models import KernelRidge, Ridge

    lags = stack["lags"]
    sets = xr.DataArray(["lag_set", "image_set"], dims="set", name="set")
    both = {"coords": "minimal", "compat": "override", "join": "override"}
    X = xr.concat(
        [lag_features(lags[2], lags[3], bands), lag_features(lags[1], lags[2], bands)],
        sets,
        **both,
    )
    y = xr.concat([lags[1], stack["image"]], dim=X.set, **both)
    w = xr.concat([weights["lag"], weights["image"]], dim=X.set, **both)
    X = X.where(w.notnull())  # held-out / cloudy rows never become Nyström landmarks
    X, y, w = (plain_coords(a) for a in (X, y, w))
    log.info(
        "fitting ridge and kernel ridge forecasts on %d + %d pixels", weights["n"], weights["m"]
    )
    ridge = Ridge(alpha=ridge_alpha).fit(X, y, sample_weight=w)
    kernel = KernelRidge(
        alpha=kernel_alpha,
        gamma=kernel_gamma,
        method="nystroem",
        random_state=seed,
        sampling_factor=kernel_sampling_factor,
    ).fit(X, y, sample_weight=w)
    return {"ridge": ridge, "kernel": kernel}


def forecast(stack: dict[str, Any], model: Any, bands: list[str]) -> xr.DataArray:
    """Forecast the cloud-free image lazily from its two most recent lags."""
    lags = stack["lags"]
    return lag_features(lags[1], lags[2], bands).xf.predict(model).rename("forecast")


def visible_bands(bands: list[str]) -> list[int]:
    """Positions of the visible bands B1…B4 in ``bands`` (every band when none is there).

    Examples
    --------
    >>> visible_bands(["B5", "B2", "B7", "B4"]), visible_bands(["red", "nir"])
    ([1, 3], [0, 1])
    """
    idx = [i for i, b in enumerate(bands) if b in ("B1", "B2", "B3", "B4")]
    return idx or list(range(len(bands)))


def fit_clusters(
    differences: xr.DataArray,
    image: xr.DataArray,
    n_clusters: tuple[int, ...],
    *,
    kmeans_sample: int,
    kmeans_init: int,
    cloud_threshold: float,
    seed: int = 0,
) -> dict[int, KMeans]:
    """k-means per cluster count on a pixel sample, clusters labelled by brightening (computes).

    ``kmeans_sample`` pixels (``seed``) are drawn; every count of ``n_clusters`` is fitted with
    ``kmeans_init`` restarts.

    Clusters are ordered by the brightness of their pixels in the image (darkest first); a
    cluster whose centre brightens the visible bands by more than ``cloud_threshold`` is cloud,
    one that darkens them by more is shadow.
    """
    bands = [str(b) for b in differences.band.values]
    named = image.assign_coords(band=[f"{b}_image" for b in bands])
    both = xr.concat([differences, named], dim="band", coords="minimal", compat="override")
    pixels = sample_pixels(both, kmeans_sample, seed=seed)
    diff, radiance = pixels[bands], pixels[[f"{b}_image" for b in bands]].to_numpy()
    visible = visible_bands(bands)
    result = {}
    for k in n_clusters:
        km = KMeans(k, n_init=kmeans_init, random_state=seed).fit(diff)
        brightness = np.array(
            [radiance[km.labels_ == c][:, visible].mean() for c in range(k)], dtype=np.float64
        )
        change = km.cluster_centers_[:, visible].mean(axis=1)
        classes = np.full(k, CLEAR, dtype=np.float32)
        classes[change > cloud_threshold] = CLOUD
        classes[change < -cloud_threshold] = SHADOW
        order = np.argsort(brightness, kind="stable")
        info = {"brightness": brightness, "brightening": change, "brightness_order": order}
        result[k] = km.label_clusters(classes, names=CLASS_NAMES, info=info)
    return result


def cluster_masks(
    differences: xr.DataArray, kmeans: dict[int, KMeans], forecast_model: str
) -> xr.DataArray:
    """Lazy masks ``(band, y, x)`` (band ``k3``, ``k5``…): 0 clear, 1 cloud, 2 shadow, NaN."""
    maps = [
        model.predict(differences).isel(band=0, drop=True).expand_dims(band=[f"k{k}"])
        for k, model in kmeans.items()
    ]
    out = xr.concat(maps, dim="band")
    out.attrs = {"classes": "0 clear, 1 cloud, 2 shadow", "forecast_model": forecast_model}
    return out.rename("cloudmask")


def output_cubes(
    stack: dict[str, Any],
    weights: dict[str, Any],
    forecasts: Mapping[str, xr.DataArray],
    differences: xr.DataArray,
    masks: xr.DataArray,
    truth: Mapping[str, xr.DataArray] | None = None,
) -> dict[str, xr.DataArray]:
    """Name every lazy result of one masked image: the cubes :func:`mask_scores` reads.

    ``image``, ``forecast_<model>`` (one per :data:`FORECAST_MODELS`), ``differences``,
    ``cloudmask`` (``masks``), ``qa_cloud`` and ``holdout`` (float32 0/1) and ``persistence``
    (the most recent clear lag). ``truth``, a synthetic scene's ``{"cloud": (time, band=[cloud,
    shadow], y, x), "background": (time, band, y, x)}``, adds ``truth_cloud``,
    ``truth_shadow`` and ``truth_background`` at the image's time. Nothing is computed.
    """
    cubes = {
        "image": stack["image"],
        **{f"forecast_{name}": forecasts[name] for name in FORECAST_MODELS},
        "differences": differences,
        "cloudmask": masks,
        "qa_cloud": stack["qa_cloud"].astype(np.float32),
        "holdout": weights["holdout"].astype(np.float32),
        "persistence": stack["lags"][1].rename("persistence"),
    }
    if truth is not None:
        cloud = truth["cloud"].sel(time=stack["time"])
        cubes["truth_cloud"] = cloud.sel(band="cloud", drop=True).rename("truth_cloud")
        cubes["truth_shadow"] = cloud.sel(band="shadow", drop=True).rename("truth_shadow")
        background = truth["background"].sel(time=stack["time"])
        cubes["truth_background"] = background.rename("truth_background")
    return cubes


# ----------------------------------------------------------------------------------------------
# scores on computed cubes
# ----------------------------------------------------------------------------------------------


def _time_text(value: Any) -> str:
    if np.issubdtype(np.asarray(value).dtype, np.datetime64):
        return str(np.datetime_as_string(np.datetime64(value), unit="s"))
    return str(value)


def _rmse(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    diff = (a - b)[:, where]
    diff = diff[np.isfinite(diff)]
    return float(np.sqrt(np.mean(diff**2))) if diff.size else float("nan")


def _pixels(cubes: dict[str, xr.DataArray]) -> dict[str, np.ndarray]:
    """Masks of the scored pixels: ``valid``, ``clear`` and held-out clear ``eval`` (numpy)."""
    image = cubes["image"].values  # xf: computes nothing (already computed)
    valid = np.isfinite(image).all(axis=0) & np.isfinite(cubes["cloudmask"].values).all(axis=0)
    if "truth_cloud" in cubes:
        clear = (cubes["truth_cloud"].values == 0) & (cubes["truth_shadow"].values == 0)
        reference = cubes["truth_cloud"].values.astype(bool)
    else:
        reference = cubes["qa_cloud"].values.astype(bool)
        clear = ~reference
    held = cubes["holdout"].values.astype(bool)
    return {"valid": valid, "clear": clear, "eval": valid & held & clear, "reference": reference}


def mask_scores(
    cubes: dict[str, xr.DataArray], stack: dict[str, Any], weights: dict[str, Any], main: str
) -> dict[str, Any]:
    """Forecast errors and mask agreement of computed output cubes (numpy-backed).

    ``cubes`` holds ``image``, ``forecast_ridge``, ``forecast_kernel``, ``cloudmask``,
    ``qa_cloud`` and ``holdout`` (and ``truth_cloud``, ``truth_shadow``, ``truth_background``
    on synthetic scenes); ``main`` is the band of ``cloudmask`` reported without prefix.

    Returns
    -------
    dict
        The target and lag dates, the training-set sizes, ``rmse_<model>`` on held-out clear
        pixels (``background_rmse_<model>`` under the truth's clouds), per mask band its
        accuracy, IoU and κ against the QA mask (``_vs_qa``) and the truth, the QA mask's
        against the truth (``qa_*``) and both cloud fractions.
    """
    px = _pixels(cubes)
    valid, clear, image = px["valid"], px["clear"], cubes["image"].values
    qa_cloud = cubes["qa_cloud"].values.astype(bool)
    has_truth = "truth_cloud" in cubes
    metrics: dict[str, Any] = {
        "target_time": _time_text(stack["time"]),
        "lag_times": stack["lag_times"],
        "n_lag_set": weights["n"],
        "n_image_set": weights["m"],
        "n_heldout_clear": int(px["eval"].sum()),
        "clear_reference": "truth" if has_truth else "qa",
    }
    for name in FORECAST_MODELS:
        predicted = cubes[f"forecast_{name}"].values
        metrics[f"rmse_{name}"] = _rmse(predicted, image, px["eval"])
        if has_truth:
            background = cubes["truth_background"].values
            metrics[f"background_rmse_{name}"] = _rmse(predicted, background, valid & ~clear)
    masks = cubes["cloudmask"]
    for band in masks.band.values:
        ours = masks.sel(band=band).values == CLOUD
        for key, value in agreement(ours[valid], qa_cloud[valid]).items():
            metrics[f"{band}_{key}_vs_qa"] = value
        if has_truth:
            for key, value in agreement(ours[valid], px["reference"][valid]).items():
                metrics[f"{band}_{key}"] = value
                if band == main:
                    metrics[key] = value
    if has_truth:
        for key, value in agreement(qa_cloud[valid], px["reference"][valid]).items():
            metrics[f"qa_{key}"] = value
    metrics["cloud_fraction"] = float(np.mean(masks.sel(band=main).values[valid] == CLOUD))
    metrics["qa_cloud_fraction"] = float(np.mean(qa_cloud[valid]))
    return metrics


def visible_mean(cube: xr.DataArray) -> np.ndarray:
    """Mean of a computed ``(band, y, x)`` cube over its visible bands (:func:`visible_bands`)."""
    return cube.values[visible_bands([str(b) for b in cube.band.values])].mean(axis=0)


def mask_baselines(
    cubes: dict[str, xr.DataArray], forecast_rmse: float, main: str
) -> dict[str, tuple[dict[str, float], dict[str, dict[str, float]]]]:
    """Scores of the mask and the forecast beside their baselines', on the same pixels.

    The mask (band ``main``) is scored against Otsu thresholds (unsupervised, cloud above) of
    the image's visible brightness and of its brightening over the forecast
    (``differences``), by IoU against the same reference (truth, else the QA mask);
    persistence (``cubes["persistence"]``, the most recent clear image) against the forecast
    (``forecast_rmse``) by RMSE on the same held-out clear pixels.

    Returns
    -------
    dict
        ``{"mask": (scores, {baseline: scores}), "forecast": (scores, {"persistence":
        scores})}``: the arguments of a ``baseline_block`` each.
    """
    px = _pixels(cubes)
    valid, reference = px["valid"], px["reference"][px["valid"]]
    indices = pd.DataFrame(
        {
            "brightness": visible_mean(cubes["image"])[valid],
            "brightening": visible_mean(cubes["differences"])[valid],
        }
    )
    scores = {}
    for name in indices.columns:
        otsu = ThresholdClassifier(name, above=True).fit(indices)
        scores[f"otsu_{name}"] = {
            **score_predictions(otsu.predict(indices), reference, task="segmentation"),
            "threshold": otsu.threshold_,
        }
    ours = cubes["cloudmask"].sel(band=main).values[valid] == CLOUD
    model = score_predictions(ours, reference, task="segmentation")
    persistence = {"rmse": _rmse(cubes["persistence"].values, cubes["image"].values, px["eval"])}
    return {
        "mask": (model, scores),
        "forecast": ({"rmse": forecast_rmse}, {"persistence": persistence}),
    }


# ----------------------------------------------------------------------------------------------
# figures of computed cubes
# ----------------------------------------------------------------------------------------------


def true_colour(cube: xr.DataArray, limits: tuple[float, float]) -> np.ndarray:
    """``(y, x, 3)`` image of B4, B3, B2 (or the first bands) stretched linearly over ``limits``.

    One stretch for the three bands (unlike :func:`xfusion.viz.rgb_array`'s per-band
    percentiles), so two images drawn with the same ``limits`` compare; NaN is black. Reads
    ``cube`` (computes).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.full((2, 1, 1), 0.5), dims=("band", "y", "x"),
    ...                     coords={"band": ["B3", "B4"]})
    >>> true_colour(cube, (0.0, 1.0)).tolist()
    [[[0.5, 0.5, 0.5]]]
    """
    lo, hi = limits
    bands = [str(b) for b in cube.band.values]
    names = [b for b in ("B4", "B3", "B2") if b in bands] or bands[:3]
    names += names[-1:] * (3 - len(names))
    arr = np.stack([cube.sel(band=b).values for b in names], axis=-1)  # xf: computes the image
    return np.nan_to_num(np.clip((arr - lo) / (hi - lo), 0, 1))


def plot_masks(
    cubes: Mapping[str, xr.DataArray],
    metrics: Mapping[str, Any],
    *,
    forecast_model: str,
    main: str,
    path: str | Path | None = None,
) -> Any:
    """Draw image, forecast, difference, QA mask, our mask (and truth) in a row (computes).

    ``cubes`` are :func:`output_cubes`' once computed; the image and the forecast share the
    forecast's 2–98 % stretch, so the ground stays visible beside the bright clouds. The title
    gives the accuracy, the QA mask's and κ where ``metrics`` (:func:`mask_scores`') has them.
    Returns the matplotlib Figure (written to ``path`` as a PNG when given).
    """
    from matplotlib.colors import ListedColormap

    from xfusion.viz import plot_map_row

    forecast = cubes[f"forecast_{forecast_model}"]
    values = forecast.values[np.isfinite(forecast.values)]  # xf: computes nothing (computed)
    limits = tuple(np.percentile(values, [2, 98])) if values.size else (0.0, 1.0)
    classes = {"cmap": ListedColormap(["#1b1b1b", "#f2f2f2", "#3b6fd1"]), "vmin": 0, "vmax": 2}
    panels: list[tuple[str, Any, dict]] = [
        ("image", true_colour(cubes["image"], limits), {}),
        (f"{forecast_model} forecast", true_colour(forecast, limits), {}),
        ("image − forecast (visible mean)", visible_mean(cubes["differences"]),
         {"cmap": "RdBu_r", "vmin": -0.2, "vmax": 0.2}),
        ("QA cloud mask", cubes["qa_cloud"].values, classes),
        (f"k-means mask ({main})", cubes["cloudmask"].sel(band=main).values, classes),
    ]  # fmt: skip
    if "truth_cloud" in cubes:
        panels.append(("truth cloud", cubes["truth_cloud"].values, classes))
    title = None
    if "accuracy" in metrics:
        title = (
            f"{metrics['target_time'][:10]}: accuracy {metrics['accuracy']:.3f} "
            f"(QA {metrics['qa_accuracy']:.3f}), κ {metrics['kappa']:.3f}"
        )
    return plot_map_row(panels, title=title, path=path)


def plot_forecast_errors(rmse: Mapping[str, float], path: str | Path | None = None) -> Any:
    """Bar chart of forecast RMSEs by name (persistence first, the models after); a Figure.

    Examples
    --------
    >>> fig = plot_forecast_errors({"persistence": 0.05, "ridge": 0.03, "kernel": 0.02})
    >>> [t.get_text() for t in fig.axes[0].get_xticklabels()]
    ['persistence', 'ridge', 'kernel']
    """
    from matplotlib.figure import Figure

    colours = ["#bbbbbb", "#888888", "#d95f02"]
    fig = Figure(figsize=(4.5, 3.2), dpi=90, layout="constrained")
    ax = fig.subplots()
    ax.bar(list(rmse), list(rmse.values()), color=colours[: len(rmse)] or None)
    ax.set(ylabel="RMSE on held-out clear pixels", title="background forecast error")
    if path is not None:
        fig.savefig(path)
    return fig
