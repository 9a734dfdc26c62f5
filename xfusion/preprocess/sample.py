"""Point and patch sampling for training.

Both functions **compute**: they decide where to sample from the data (valid pixels, nodata
fractions, regions) and return the samples in memory. Each is tested to compute exactly the
documented number of times, and neither materialises more of the cube than it samples besides
one ``(y, x)`` mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask
import dask.array
import numpy as np
import pandas as pd
import xarray as xr
from affine import Affine
from odc.geo.geom import Geometry
from rasterio.features import geometry_mask
from shapely.geometry import box as shapely_box
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from xfusion._kernels.augment import dihedral
from xfusion.errors import EmptySelectionError, GridError, InputError
from xfusion.grids import grid_mismatch
from xfusion.validate import check_float_nodata, check_unique_bands, require_bands

__all__ = ["MAX_STRATA", "class_balance", "dihedral", "patches", "sample"]

#: Most distinct values a float label may have for ``sample(..., stratify=True)`` (one stratum
#: per value); more means a continuous label, to stratify in quantile bins (``stratify=k``).
MAX_STRATA = 64


# --------------------------------------------------------------------------------------------
# points


def sample(
    da: xr.DataArray,
    labels: xr.DataArray | str,
    n: int,
    *,
    seed: int = 0,
    stratify: bool | int = False,
) -> pd.DataFrame:
    """Sample labelled pixels for training a pixel model.

    This is a **computing** function, in exactly two Dask computes: the valid-pixel mask and
    the labels (one ``(y, x)`` plane each), then the drawn pixels only, gathered with vectorised
    indexing. A pixel is valid when every band and the label are finite.

    Parameters
    ----------
    da : xarray.DataArray
        Cube ``(band, y, x)`` (composite first if it has a ``time`` dim).
    labels : xarray.DataArray or str
        Labels ``(y, x)`` on the cube's grid, or the name of a band of ``da`` (which then becomes
        the label column and is left out of the features).
    n : int
        Number of points; with ``stratify``, number of points per class (or bin). Fewer come
        back where fewer valid pixels exist.
    seed : int
        Seed of the random draw: the same seed gives the same points.
    stratify : bool or int
        ``True``: draw ``n`` points from each label value (all of a class's pixels where it has
        fewer), like Earth Engine's ``stratifiedSample``. The label must be a class label: an
        integer label, one whose ``band_kind`` is ``"categorical"`` (see :mod:`xfusion.bands`),
        or a float label with at most :data:`MAX_STRATA` (64) distinct values; a float label
        with more is continuous and refused. An int ``k >= 2``: cut the label's valid values
        into ``k`` quantile bins (equal-count; bins that tie collapse into one) and draw ``n``
        points from each, for continuous labels. ``False``: ``n`` points uniformly.

    Returns
    -------
    pandas.DataFrame
        Columns ``x``, ``y`` (pixel-centre coordinates), one column per band, and ``label``; rows
        in raster order. ``df.attrs["class_balance"]`` holds :func:`class_balance` of the labels;
        with ``stratify=k``, ``df.attrs["strata"]`` holds the bin edges and the ``stratum``
        column each point's bin (0 to the number of bins - 1).

    Raises
    ------
    InputError
        ``da`` is not a ``(band, y, x)`` cube, ``n`` is not a positive integer, ``da`` is an
        integer cube that declares a nodata value (its fill value would be sampled as data),
        ``stratify`` is neither a bool nor an int >= 2, or ``stratify=True`` on a float label
        with more than :data:`MAX_STRATA` distinct values (the message names the count).
    BandError
        Band names repeat, or ``labels`` names a band that is not in ``da``.
    GridError
        ``labels`` is not on the cube's grid.
    EmptySelectionError
        No pixel has finite values in every band and in the labels.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> coords = {"band": ["B1", "B2"], "y": [2.5, 1.5, 0.5], "x": [0.5, 1.5, 2.5]}
    >>> cube = xr.DataArray(np.arange(18.0).reshape(2, 3, 3), dims=("band", "y", "x"),
    ...                     coords=coords)
    >>> labels = xr.DataArray(np.array([[0, 0, 1], [0, 1, 1], [0, 0, np.nan]]), dims=("y", "x"))
    >>> df = sample(cube, labels, 4, seed=1)
    >>> list(df.columns)
    ['x', 'y', 'B1', 'B2', 'label']
    >>> len(df), bool(df.notna().all().all())
    (4, True)
    >>> sorted(sample(cube, labels, 2, stratify=True)["label"])
    [0.0, 0.0, 1.0, 1.0]

    A continuous label is stratified in quantile bins:

    >>> field = xr.DataArray(np.arange(9.0).reshape(3, 3) / 8, dims=("y", "x"))
    >>> df = sample(cube, field, 1, stratify=3, seed=0)
    >>> df["stratum"].tolist(), df.attrs["strata"]
    ([0, 1, 2], [0.0, 0.333..., 0.666..., 1.0])
    """
    _check_image(da, "sample")
    n = _positive_int(n, "n")
    bins = _strata(stratify)
    categorical = _label_is_categorical(da, labels)
    features, label = _split_labels(da, labels, "labels")
    valid = features.notnull().all("band") & label.notnull()
    valid_np, label_np = dask.compute(valid.data, label.data)  # xf: computes valid mask, labels

    rng = np.random.default_rng(seed)
    flat_valid = np.flatnonzero(np.ravel(valid_np))
    if flat_valid.size == 0:
        raise EmptySelectionError(
            "no valid pixel to sample: every pixel has NaN in a band or in the labels"
        )
    flat_labels = np.ravel(label_np)
    edges = None
    if bins:
        values = flat_labels[flat_valid].astype(np.float64)
        edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
        strata = np.zeros(flat_labels.shape, dtype=np.int64)
        strata[flat_valid] = np.searchsorted(edges[1:-1], values, side="right")
        drawn = [
            _draw(rng, flat_valid[strata[flat_valid] == k], n)
            for k in range(max(len(edges) - 1, 1))
        ]
        chosen = np.sort(np.concatenate(drawn))
    elif stratify:
        classes = np.unique(flat_labels[flat_valid])
        if not categorical and flat_labels.dtype.kind == "f" and classes.size > MAX_STRATA:
            raise InputError(
                f"stratify=True draws n points per label value, but the label has {classes.size} "
                f"distinct values (from {classes.min():g} to {classes.max():g}): a continuous "
                f"label, not classes; expected at most {MAX_STRATA} values for a float label. "
                "Pass stratify=<number of quantile bins> (e.g. stratify=5), stratify=False, or "
                "mark the label 'categorical' with xfusion.bands.set_band_kinds"
            )
        drawn = [_draw(rng, flat_valid[flat_labels[flat_valid] == value], n) for value in classes]
        chosen = np.sort(np.concatenate(drawn))
    else:
        chosen = np.sort(_draw(rng, flat_valid, n))

    iy, ix = np.unravel_index(chosen, valid_np.shape)
    points = features.isel(y=xr.DataArray(iy, dims="sample"), x=xr.DataArray(ix, dims="sample"))
    (values,) = dask.compute(points.transpose("sample", "band").data)  # xf: computes samples

    columns: dict[str, Any] = {"x": features.x.values[ix], "y": features.y.values[iy]}
    for j, name in enumerate(features.band.values):
        columns[str(name)] = values[:, j]
    columns["label"] = flat_labels[chosen]
    if edges is not None:
        columns["stratum"] = strata[chosen]
    df = pd.DataFrame(columns)
    df.attrs["class_balance"] = class_balance(df)
    if edges is not None:
        df.attrs["strata"] = edges.tolist()
    return df


def _strata(stratify: Any) -> int:
    """Return the number of quantile bins ``stratify`` asks for (0: none, or one per class)."""
    if isinstance(stratify, bool | np.bool_):
        return 0
    if isinstance(stratify, int | np.integer) and stratify >= 2:
        return int(stratify)
    raise InputError(
        f"stratify must be True/False or a number of quantile bins >= 2; got {stratify!r}"
    )


def _label_is_categorical(da: xr.DataArray, labels: Any) -> bool:
    """Whether the label's ``band_kind`` (recorded or inferred from its name) is a class kind."""
    from xfusion.bands import band_kinds

    if isinstance(labels, str):
        kinds = band_kinds(da) if "band" in da.dims else {}
        return kinds.get(labels) in ("categorical", "flags")
    if isinstance(labels, xr.DataArray):
        return any(k in ("categorical", "flags") for k in band_kinds(labels).values())
    return False


def class_balance(labels: Any, *, column: str = "label") -> dict[str, Any]:
    """Summary statistics of labels, like Earth Engine's ``aggregate_stats``, plus class counts.

    Parameters
    ----------
    labels : pandas.DataFrame, pandas.Series, xarray.DataArray or array
        The labels; for a DataFrame, its ``column``. A chunked DataArray is computed (one
        compute). NaN values are not valid and are left out of the statistics.
    column : str
        Label column of a DataFrame.

    Returns
    -------
    dict
        ``total_count`` (all values), ``valid_count`` (non-NaN), ``sum``, ``sum_sq``, ``mean``,
        ``min``, ``max``, ``sample_var``/``sample_sd`` (ddof 1), ``total_var``/``total_sd``
        (ddof 0), ``counts`` (values per class) and ``fractions`` (share of each class).

    Examples
    --------
    >>> stats = class_balance(np.array([0, 0, 0, 1]))
    >>> stats["mean"], stats["sum"], stats["counts"]
    (0.25, 1.0, {0: 3, 1: 1})
    """
    if isinstance(labels, pd.DataFrame):
        if column not in labels.columns:
            raise InputError(f"column {column!r} not in DataFrame; columns are {list(labels)}")
        values = labels[column].to_numpy()
    elif isinstance(labels, pd.Series):
        values = labels.to_numpy()
    elif isinstance(labels, xr.DataArray):
        (values,) = dask.compute(labels.data)  # xf: computes the labels to count them
    else:
        values = np.asarray(labels)
    values = np.ravel(values)
    total = int(values.size)
    if values.dtype.kind == "f":
        values = values[~np.isnan(values)]
    valid = int(values.size)
    as_float = values.astype(np.float64)
    classes, counts = np.unique(values, return_counts=True)

    def _stat(fn: Any, ddof: int = 0) -> float:
        return float(fn(as_float, ddof=ddof)) if valid > ddof else float("nan")

    return {
        "total_count": total,
        "valid_count": valid,
        "sum": float(as_float.sum()),
        "sum_sq": float((as_float**2).sum()),
        "mean": float(as_float.mean()) if valid else float("nan"),
        "min": float(as_float.min()) if valid else float("nan"),
        "max": float(as_float.max()) if valid else float("nan"),
        "sample_var": _stat(np.var, 1),
        "sample_sd": _stat(np.std, 1),
        "total_var": _stat(np.var),
        "total_sd": _stat(np.std),
        "counts": {_scalar(c): int(k) for c, k in zip(classes, counts, strict=True)},
        "fractions": {_scalar(c): k / valid for c, k in zip(classes, counts, strict=True)},
    }


# --------------------------------------------------------------------------------------------
# patches


def patches(
    da: xr.DataArray,
    target: xr.DataArray | str | Sequence[str] | None = None,
    *,
    size: int | tuple[int, int],
    n: int,
    seed: int = 0,
    regions: Any = None,
    max_nodata: float = 0.1,
    augment: bool = False,
    stride: int | tuple[int, int] | None = None,
    regions_crs: Any = None,
) -> xr.Dataset:
    """Cut ``n`` random training patches (and their targets) out of a cube.

    This is a **computing** function: it returns the patches in memory (numpy arrays in the
    Dataset), in at most two Dask computes: one ``(y, x)`` nodata mask (together with a region
    mask given as a DataArray), then the drawn patches only.

    Every candidate patch lies entirely inside ``regions`` (all its pixel centres), has at most
    ``max_nodata`` of its pixels NaN (in any input band or target band), and starts on a
    multiple of ``stride``; ``n`` of them are drawn without replacement (fewer if fewer exist).
    Keep training and evaluation regions apart by sampling them in two calls.

    Parameters
    ----------
    da : xarray.DataArray
        Cube ``(band, y, x)``.
    target : xarray.DataArray, str or list of str, optional
        Target on the same grid (``(y, x)`` or ``(band, y, x)``), or band name(s) of ``da``,
        which are then taken out of the inputs.
    size : int or (int, int)
        Patch height and width in pixels.
    n : int
        Number of patches.
    seed : int
        Seed of the draw and of the augmentation: the same seed gives the same patches.
    regions : optional
        Where patches may lie: a box ``(left, bottom, right, top)``, a shapely geometry, a GeoJSON
        geometry / Feature / FeatureCollection (with an optional ``"crs"`` member), an odc-geo
        Geometry, a list of any of these, or a boolean ``(y, x)`` DataArray mask on the grid.
        Coordinates are in the cube's CRS unless they carry their own or ``regions_crs`` is set.
    max_nodata : float
        Largest accepted fraction of nodata pixels in a patch (0 to 1).
    augment : bool
        Replace every returned patch (inputs and target alike) by a random one of its eight
        dihedral transforms (:func:`dihedral`; square patches only); the transform number is
        the ``dihedral`` coordinate.
    stride : int or (int, int), optional
        Patch origins only on multiples of this (e.g. ``size`` for non-overlapping patches).
    regions_crs : optional
        CRS of ``regions`` without one of their own.

    Returns
    -------
    xarray.Dataset
        ``inputs`` ``(sample, band, y, x)`` float32 and, with a target, ``target``
        ``(sample, target_band, y, x)``; per sample the coordinates ``row``/``col`` (pixel offset
        of the top-left pixel) and ``x0``/``y0`` (geographic top-left corner), so patch ``i``'s
        transform is ``Affine(a, b, x0[i], d, e, y0[i])`` with ``attrs["transform"]``'s ``a, b,
        d, e``. ``attrs["crs"]`` holds the cube's CRS as WKT.

    Raises
    ------
    InputError
        ``da`` is not a ``(band, y, x)`` cube, ``size``/``n``/``stride``/``max_nodata`` are
        invalid, the patch is larger than the cube, or ``da`` is an integer cube that declares a
        nodata value (its fill value would pass for data).
    BandError
        Band names repeat, or a target band is not in ``da``.
    GridError
        The target or the regions are not on (or do not overlap) the cube's grid.
    EmptySelectionError
        No patch position satisfies ``regions`` and ``max_nodata``.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xfusion as xf
    >>> g = xf.grid((500000, 0, 500080, 80), "EPSG:32633", 10)
    >>> cube = xf.grids.assign_grid(xr.DataArray(np.ones((2, 8, 8), "float32"),
    ...     dims=("band", "y", "x"), coords={"band": ["B1", "nightlights"]}), g)
    >>> ds = patches(cube, "nightlights", size=4, n=3, regions=[(500000, 0, 500080, 40)])
    >>> dict(ds.inputs.sizes), ds.target.target_band.values.tolist()
    ({'sample': 3, 'band': 1, 'y': 4, 'x': 4}, ['nightlights'])
    >>> bool((ds.y0 <= 40).all())
    True
    """
    _check_image(da, "patches")
    n = _positive_int(n, "n")
    height, width = _pair(size, "size")
    sy, sx = (1, 1) if stride is None else _pair(stride, "stride")
    if not 0 <= float(max_nodata) <= 1:
        raise InputError(f"max_nodata must be a fraction between 0 and 1; got {max_nodata!r}")
    ny, nx = da.sizes["y"], da.sizes["x"]
    if height > ny or width > nx:
        raise InputError(
            f"patch size {height}x{width} is larger than the cube ({ny}x{nx} pixels, y by x)"
        )
    if augment and height != width:
        raise InputError(f"augment needs square patches (rotations); got size {height}x{width}")

    inputs, tgt = _split_target(da, target)
    affine = _affine_of(da)
    region_geoms, region_mask = _regions(regions, da, affine, regions_crs)

    bad = inputs.isnull().any("band")
    if tgt is not None:
        bad = bad | tgt.isnull().any("target_band")
    lazy: dict[str, Any] = {}
    if float(max_nodata) < 1:
        lazy["bad"] = bad.data
    if region_mask is not None:
        lazy["region"] = region_mask.data
    (masks,) = dask.compute(lazy)  # xf: computes the nodata (and region) masks to choose patches
    if region_geoms is not None:
        masks["region"] = region_geoms

    ok = np.zeros((ny - height + 1, nx - width + 1), dtype=bool)
    ok[::sy, ::sx] = True
    if "region" in masks:
        outside = _window_sums(~masks["region"].astype(bool), height, width)
        ok &= outside == 0
    if "bad" in masks:
        nodata = _window_sums(masks["bad"].astype(bool), height, width)
        ok &= nodata <= float(max_nodata) * height * width
    candidates = np.flatnonzero(ok)
    if candidates.size == 0:
        raise EmptySelectionError(
            f"no {height}x{width} patch fits: none lies inside the regions with at most "
            f"{max_nodata:.0%} nodata" + (f" on a stride of {(sy, sx)}" if stride else "")
        )
    rng = np.random.default_rng(seed)
    chosen = _draw(rng, candidates, n)
    rows, cols = np.unravel_index(chosen, ok.shape)

    def _cut(arr: xr.DataArray) -> list[Any]:
        data = arr.data
        return [data[:, r : r + height, c : c + width] for r, c in zip(rows, cols, strict=True)]

    cuts = {"inputs": _cut(inputs)}
    if tgt is not None:
        cuts["target"] = _cut(tgt)
    (cut,) = dask.compute(cuts)  # xf: computes the drawn patches only
    # Stacked after computing: a lazy stack of patches straddling chunk boundaries would
    # rechunk every patch to common (tiny) chunks, tens of thousands of tasks for 50 patches.
    cut = {key: np.stack(pieces) for key, pieces in cut.items()}

    coords: dict[str, Any] = {
        "sample": np.arange(len(rows)),
        "row": ("sample", rows.astype(np.int64)),
        "col": ("sample", cols.astype(np.int64)),
    }
    x0, y0 = _apply(affine, cols.astype(np.float64), rows.astype(np.float64))
    coords["x0"] = ("sample", x0)
    coords["y0"] = ("sample", y0)
    if augment:
        ks = rng.integers(0, 8, size=len(rows))
        for key in cut:
            cut[key] = np.stack([dihedral(p, k) for p, k in zip(cut[key], ks, strict=True)])
        coords["dihedral"] = ("sample", ks)

    data_vars = {
        "inputs": (
            ("sample", "band", "y", "x"),
            cut["inputs"].astype(np.float32, copy=False),
        )
    }
    coords["band"] = inputs.band.values
    if tgt is not None:
        data_vars["target"] = (
            ("sample", "target_band", "y", "x"),
            cut["target"].astype(np.float32, copy=False),
        )
        coords["target_band"] = tgt.target_band.values
    crs = _crs_of(da)
    attrs = {
        "transform": list(affine)[:6],
        "patch_size": [height, width],
        "seed": int(seed),
        "max_nodata": float(max_nodata),
    }
    if crs is not None:
        attrs["crs"] = crs.to_wkt()
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


# --------------------------------------------------------------------------------------------
# helpers


def _check_image(da: Any, what: str) -> None:
    if not isinstance(da, xr.DataArray):
        raise InputError(f"{what} expects an xarray.DataArray cube; got {type(da).__name__}")
    if set(da.dims) != {"band", "y", "x"}:
        hint = " (select a time or composite first)" if "time" in da.dims else ""
        raise InputError(f"{what} needs a cube with dims ('band', 'y', 'x'); got {da.dims}{hint}")
    check_unique_bands(da, what)
    check_float_nodata(da, what)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InputError(f"{name} must be an integer >= 1; got {value!r}")
    return int(value)


def _pair(value: Any, name: str) -> tuple[int, int]:
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(pair) != 2:
        raise InputError(f"{name} must be an integer or (height, width); got {value!r}")
    return _positive_int(pair[0], name), _positive_int(pair[1], name)


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    if pool.size <= n:
        return pool
    return rng.choice(pool, size=n, replace=False)


def _scalar(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _bands(da: xr.DataArray) -> list[str]:
    return [str(b) for b in da.band.values]


def _check_same_grid(da: xr.DataArray, other: xr.DataArray, what: str) -> xr.DataArray:
    """Return ``other`` on the cube's exact coordinates, or raise :class:`GridError`.

    "Same grid" is :func:`xfusion.grids.same_grid` (pixel edges within 1e-3 pixel), the rule
    used everywhere; the coordinates are then snapped to the cube's, so that xarray's alignment
    keeps every pixel (a pixel size differing in the 15th digit once kept only a sliver).
    """
    if "y" not in other.dims or "x" not in other.dims:
        raise GridError(f"{what} must have 'y' and 'x' dims on the cube's grid; got {other.dims}")
    same_shape = other.sizes["y"] == da.sizes["y"] and other.sizes["x"] == da.sizes["x"]
    if not same_shape:
        raise GridError(
            f"{what} grid ({other.sizes['y']}x{other.sizes['x']} pixels) differs from the cube's "
            f"({da.sizes['y']}x{da.sizes['x']} pixels); resample it onto the cube's grid first"
        )
    crs_a, crs_b = _crs_of(da), _crs_of(other)
    if crs_a is not None and crs_b is not None and crs_a != crs_b:
        raise GridError(f"{what} CRS {crs_b} differs from the cube's CRS {crs_a}")
    if not all(d in c.coords for d in ("y", "x") for c in (da, other)):
        return other
    why = grid_mismatch(da, other)
    if why is not None:
        worst = max(("y", "x"), key=lambda d: _offset_in_pixels(da[d].values, other[d].values))
        a, b = da[worst].values, other[worst].values
        raise GridError(
            f"{what} {worst} coordinates differ from the cube's (cube {worst} runs "
            f"{a[0]}..{a[-1]}, {what} {b[0]}..{b[-1]}: {why}); resample onto the cube's grid"
        )
    return other.assign_coords(y=da["y"].values, x=da["x"].values)


def _offset_in_pixels(a: np.ndarray, b: np.ndarray) -> float:
    step = abs(float(a[1] - a[0])) if a.size > 1 else 1.0
    return float(np.max(np.abs(a.astype("float64") - b.astype("float64")))) / (step or 1.0)


def _split_labels(da: xr.DataArray, labels: Any, what: str) -> tuple[xr.DataArray, xr.DataArray]:
    if isinstance(labels, str):
        bands = require_bands(da, labels, role="label")
        keep = [i for i, b in enumerate(bands) if b != labels]
        if not keep:
            raise InputError(f"cube has no bands besides the label band {labels!r}")
        return da.isel(band=keep), da.isel(band=bands.index(labels)).drop_vars("band")
    if not isinstance(labels, xr.DataArray):
        raise InputError(
            f"{what} must be a DataArray on the cube's grid or a band name; "
            f"got {type(labels).__name__}"
        )
    labels = _check_same_grid(da, labels, what)
    extra = [d for d in labels.dims if d not in ("y", "x")]
    if any(labels.sizes[d] != 1 for d in extra):
        raise InputError(f"{what} must be a single (y, x) plane; got dims {dict(labels.sizes)}")
    labels = labels.squeeze(extra, drop=True).transpose("y", "x")
    return da, labels.drop_vars([c for c in labels.coords if c not in labels.dims])


def _split_target(da: xr.DataArray, target: Any) -> tuple[xr.DataArray, xr.DataArray | None]:
    inputs = da.transpose("band", "y", "x")
    if target is None:
        return inputs, None
    if isinstance(target, str) or (
        isinstance(target, Sequence) and all(isinstance(t, str) for t in target)
    ):
        names = [target] if isinstance(target, str) else list(target)
        bands = require_bands(da, target, role="target")
        keep = [b for b in bands if b not in names]
        if not keep:
            raise InputError(f"no input bands left once the target bands {names} are taken out")
        tgt = inputs.sel(band=names).rename(band="target_band")
        return inputs.sel(band=keep), tgt
    if not isinstance(target, xr.DataArray):
        raise InputError(
            "target must be None, a band name, a list of band names or a DataArray on the "
            f"cube's grid; got {type(target).__name__}"
        )
    target = _check_same_grid(da, target, "target")
    extra = [d for d in target.dims if d not in ("y", "x")]
    if len(extra) > 1:
        raise InputError(f"target must be (y, x) or (band, y, x); got dims {target.dims}")
    if not extra:
        name = str(target.name) if target.name is not None else "target"
        target = target.expand_dims(target_band=[name])
    else:
        target = target.rename({extra[0]: "target_band"})
    return inputs, target.transpose("target_band", "y", "x")


def _affine_of(da: xr.DataArray) -> Affine:
    """Return the pixel-to-world transform of the cube, from its pixel-centre coordinates."""
    x, y = da.x.values, da.y.values
    if x.size < 2 or y.size < 2:
        try:
            return da.odc.geobox.affine
        except Exception as err:
            raise GridError(
                "cannot infer the pixel size of a cube one pixel wide or tall without a CRS"
            ) from err
    dx, dy = float(x[1] - x[0]), float(y[1] - y[0])
    return Affine(dx, 0.0, float(x[0]) - dx / 2, 0.0, dy, float(y[0]) - dy / 2)


def _crs_of(obj: xr.DataArray) -> Any:
    if "spatial_ref" not in obj.coords and "crs" not in obj.attrs:
        return None
    try:
        return obj.rio.crs
    except Exception:  # rioxarray raises several types for unreadable CRS metadata
        return None


def _regions(
    regions: Any, da: xr.DataArray, affine: Affine, regions_crs: Any
) -> tuple[np.ndarray | None, xr.DataArray | None]:
    """Rasterise the regions: pixel centres inside them (numpy), or a lazy boolean mask."""
    if regions is None:
        return None, None
    if isinstance(regions, xr.DataArray):
        regions = _check_same_grid(da, regions, "regions mask")
        if regions.dtype != bool:
            raise InputError(f"a regions mask must be boolean; got dtype {regions.dtype}")
        return None, regions.transpose("y", "x")

    cube_crs = _crs_of(da)
    geoms = [_to_shapely(r, cube_crs, regions_crs) for r in _as_region_list(regions)]
    ny, nx = da.sizes["y"], da.sizes["x"]
    left, top = _apply(affine, 0, 0)
    right, bottom = _apply(affine, nx, ny)
    cube_box = shapely_box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    if not any(g.intersects(cube_box) for g in geoms):
        union = [round(v, 6) for v in _bounds(geoms)]
        raise GridError(
            f"regions (bounds {union}) lie outside the cube "
            f"(bounds {[round(v, 6) for v in cube_box.bounds]})"
        )
    inside = geometry_mask(geoms, out_shape=(ny, nx), transform=affine, invert=True)
    if not inside.any():
        raise GridError("regions overlap the cube but contain no pixel centre")
    return inside, None


def _as_region_list(regions: Any) -> list[Any]:
    if isinstance(regions, Mapping):
        if regions.get("type") == "FeatureCollection":
            crs = regions.get("crs")
            return [dict(f, crs=f.get("crs", crs)) for f in regions.get("features", [])]
        return [regions]
    if isinstance(regions, tuple) and len(regions) == 4 and all(np.isscalar(v) for v in regions):
        return [regions]
    if isinstance(regions, list | tuple):
        out: list[Any] = []
        for r in regions:
            out.extend(_as_region_list(r) if isinstance(r, Mapping) else [r])
        return out
    return [regions]


def _to_shapely(region: Any, cube_crs: Any, regions_crs: Any) -> Any:

    crs = regions_crs
    if isinstance(region, Geometry):
        geom, crs = region.geom, region.crs or regions_crs
    elif isinstance(region, BaseGeometry):
        geom = region
    elif isinstance(region, Mapping):
        crs = _geojson_crs(region.get("crs")) or regions_crs
        body = region.get("geometry", region) if region.get("type") == "Feature" else region
        try:
            geom = shape(body)
        except Exception as err:  # shapely raises several types for malformed GeoJSON
            raise InputError(f"cannot read region GeoJSON {region!r}: {err}") from err
    elif np.ndim(region) == 1 and len(region) == 4:
        left, bottom, right, top = (float(v) for v in region)
        if not (left < right and bottom < top):
            raise InputError(
                f"a region box must be (left, bottom, right, top) with left < right and "
                f"bottom < top; got {tuple(region)}"
            )
        geom = shapely_box(left, bottom, right, top)
    else:
        raise InputError(
            "regions must be boxes (left, bottom, right, top), shapely geometries, GeoJSON "
            f"dicts or a boolean (y, x) DataArray; got {type(region).__name__}"
        )
    if crs is not None:
        if cube_crs is None:
            raise GridError(f"regions have CRS {crs} but the cube has no CRS to reproject into")
        geom = Geometry(geom, crs=crs).to_crs(cube_crs.to_wkt()).geom
    return geom


def _geojson_crs(crs: Any) -> Any:
    if isinstance(crs, Mapping):  # GeoJSON 2008: {"type": "name", "properties": {"name": ...}}
        return crs.get("properties", {}).get("name")
    return crs


def _bounds(geoms: list[Any]) -> tuple[float, float, float, float]:
    b = np.array([g.bounds for g in geoms])
    return (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())


def _window_sums(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Count the True pixels of every height x width window (indexed by its top-left pixel)."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0), axis=1, out=table[1:, 1:])
    return (
        table[height:, width:]
        - table[:-height, width:]
        - table[height:, :-width]
        + table[:-height, :-width]
    )


def _apply(affine: Affine, col: Any, row: Any) -> tuple[Any, Any]:
    """Map pixel (column, row) positions to world (x, y) through ``affine``."""
    return (
        affine.a * col + affine.b * row + affine.c,
        affine.d * col + affine.e * row + affine.f,
    )
