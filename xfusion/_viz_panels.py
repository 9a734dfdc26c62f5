"""Static figures (matplotlib): truth/prediction/difference panels, loss curves, class maps, bands.

Every function returns a :class:`matplotlib.figure.Figure` made without ``pyplot`` (no global
state, any backend) and writes a PNG when given ``path``. Plotting computes: each function reads
what it draws in one Dask compute (the lines say so).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from xfusion.errors import InputError, SourceError
from xfusion.validate import require_bands

__all__ = ["plot_bands", "plot_classes", "plot_loss", "plot_panels"]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _percentile_limits(
    values: Sequence[np.ndarray] | np.ndarray, stretch: Sequence[float]
) -> tuple[float, float]:
    """Return the ``stretch`` percentiles of the finite values of one or several arrays."""
    lo, hi = (float(s) for s in stretch)
    if not 0 <= lo < hi <= 100:
        raise InputError(f"stretch must be percentiles 0 <= low < high <= 100; got {stretch}")
    arrays = [values] if isinstance(values, np.ndarray) else list(values)
    finite = np.concatenate([np.ravel(a)[np.isfinite(np.ravel(a))] for a in arrays])
    if not finite.size:
        return 0.0, 1.0
    low, high = np.percentile(finite, [lo, hi])
    if high <= low:  # a constant image: widen so the colour bar is drawable
        low, high = low - 0.5, high + 0.5
    return float(low), float(high)


def select_time(obj: xr.DataArray, time: Any, what: str) -> xr.DataArray:
    """Return ``obj`` at one time step: ``time`` if given, else its only one (drawing needs one)."""
    if "time" in obj.dims:
        if time is not None:
            try:
                obj = obj.sel(time=time)
            except (KeyError, TypeError, ValueError) as err:
                raise InputError(
                    f"time {time!r} not in {what}; times are {[str(t) for t in obj.time.values]}"
                ) from err
        if "time" in obj.dims:
            if obj.sizes["time"] != 1:
                raise InputError(
                    f"{what} has {obj.sizes['time']} time steps; choose one with time=... "
                    "(or .isel(time=i)), or composite first"
                )
            obj = obj.isel(time=0)
    elif time is not None:
        raise InputError(f"time={time!r} given but {what} has no 'time' dimension")
    return obj


def _squeeze_image(obj: Any, what: str, time: Any = None) -> xr.DataArray:
    """Return a 2-D ``(y, x)`` DataArray from an image, a one-band cube or a numpy array."""
    if isinstance(obj, np.ndarray):
        obj = xr.DataArray(obj)
        if obj.ndim == 2:
            obj = obj.rename({obj.dims[0]: "y", obj.dims[1]: "x"})
    if not isinstance(obj, xr.DataArray):
        raise InputError(f"{what} must be a DataArray or numpy array; got {type(obj).__name__}")
    obj = select_time(obj, time, what)
    for dim in [d for d in obj.dims if d not in ("y", "x")]:
        if obj.sizes[dim] != 1:
            raise InputError(
                f"{what} must be a single image (y, x); got dims {dict(obj.sizes)} "
                f"(select one {dim!r} first)"
            )
        obj = obj.isel({dim: 0})
    if obj.ndim != 2:
        raise InputError(f"{what} must be two-dimensional (y, x); got dims {obj.dims}")
    return obj.transpose(*[d for d in ("y", "x") if d in obj.dims] or obj.dims)


def _load(*arrays: xr.DataArray) -> list[np.ndarray]:
    """Read all arrays in one compute, as float64 numpy arrays."""
    loaded = dask.compute(*arrays)  # xf: computes the figure's data, once for all panels
    return [np.asarray(a.data, dtype=np.float64) for a in loaded]


def _extent(da: xr.DataArray) -> tuple[float, float, float, float] | None:
    """Pixel-edge extent ``(left, right, bottom, top)`` from 1-D x/y coordinates, if any."""
    if "x" not in da.coords or "y" not in da.coords or da.sizes["x"] < 2 or da.sizes["y"] < 2:
        return None
    x, y = da.x.values, da.y.values
    if x.ndim != 1 or y.ndim != 1 or not np.issubdtype(x.dtype, np.number):
        return None
    dx, dy = (x[1] - x[0]) / 2, (y[1] - y[0]) / 2
    return (float(x[0] - dx), float(x[-1] + dx), float(y[-1] + dy), float(y[0] - dy))


def _figure(nrows: int, ncols: int, panel: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel * ncols + 0.6, panel * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _style_map_axes(ax: Any, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Any, path: str | os.PathLike | None, dpi: int) -> None:
    if path is None:
        return
    try:
        fig.savefig(Path(path), dpi=dpi)
    except OSError as err:
        raise SourceError(f"cannot write the figure to {str(path)!r}: {err}") from err


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def plot_panels(
    truth: xr.DataArray | np.ndarray,
    prediction: xr.DataArray | np.ndarray,
    *,
    difference: bool = True,
    cmap: str = "viridis",
    diff_cmap: str = "RdBu_r",
    titles: Sequence[str] | None = None,
    stretch: tuple[float, float] = (2, 98),
    vmin: float | None = None,
    vmax: float | None = None,
    units: str | None = None,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Any:
    """Draw truth, prediction and their difference side by side; return the Figure.

    Truth and prediction share one colour scale (the ``stretch`` percentiles of both, unless
    ``vmin``/``vmax`` are given), so they compare at a glance; the difference
    ``prediction - truth`` has a diverging scale symmetric about zero. The prediction's title
    reports the RMSE and R² over the pixels where both are finite. This function computes (it
    reads both images, in one compute).

    Parameters
    ----------
    truth, prediction : DataArray or numpy array
        Images of the same shape ``(y, x)``; a ``band`` (or other) dimension of length one is
        dropped.
    difference : bool
        Add the difference panel.
    cmap : str
        Colour map of truth and prediction.
    diff_cmap : str
        Diverging colour map of the difference.
    titles : sequence of str, optional
        Panel titles (two or three); the metrics are appended to the prediction's.
    stretch : (low, high)
        Percentiles of the shared colour scale; ``high`` also sets the difference's scale
        (that percentile of ``|prediction - truth|``).
    vmin, vmax : float, optional
        Shared colour limits of truth and prediction.
    units : str, optional
        Colour-bar label (default: the truth's ``units`` attribute).
    path : path, optional
        Write the figure as a PNG there.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.arange(16.0).reshape(4, 4)
    >>> fig = plot_panels(truth, truth + 1)
    >>> [ax.get_title().splitlines()[-1] for ax in fig.axes[:3]]
    ['truth', 'RMSE = 1, R² = 0.953', 'prediction − truth']
    """
    t_img = _squeeze_image(truth, "truth")
    p_img = _squeeze_image(prediction, "prediction")
    if t_img.shape != p_img.shape:
        raise InputError(
            f"truth and prediction must have the same shape; got {t_img.shape} and {p_img.shape}"
        )
    t, p = _load(t_img, p_img)
    both = np.isfinite(t) & np.isfinite(p)
    if both.any():
        err = p[both] - t[both]
        rmse = float(np.sqrt(np.mean(err**2)))
        ss_tot = float(np.sum((t[both] - t[both].mean()) ** 2))
        r2 = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else float("nan")
    else:
        rmse = r2 = float("nan")
    low, high = _percentile_limits([t, p], stretch)
    low = low if vmin is None else float(vmin)
    high = high if vmax is None else float(vmax)
    names = ["truth", "prediction", "prediction − truth"]
    if titles is not None:
        titles = [str(s) for s in titles]
        if len(titles) not in (2, 3):
            raise InputError(f"titles must name two or three panels; got {titles}")
        names[: len(titles)] = titles
    names[1] = f"{names[1]}\nRMSE = {rmse:.3g}, R² = {r2:.3f}"
    label = units if units is not None else str(getattr(truth, "attrs", {}).get("units", ""))
    extent = _extent(t_img)
    fig, axes = _figure(1, 3 if difference else 2)
    for ax, img, title in zip(axes[0], (t, p), names, strict=False):
        im = ax.imshow(img, cmap=cmap, vmin=low, vmax=high, extent=extent, interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)
        _style_map_axes(ax, title)
    if difference:
        diff = p - t
        _, bound = _percentile_limits(np.abs(diff), (0, stretch[1]))
        bound = bound if np.isfinite(diff).any() and bound > 0 else 1.0
        ax = axes[0][2]
        im = ax.imshow(
            diff, cmap=diff_cmap, vmin=-bound, vmax=bound, extent=extent, interpolation="nearest"
        )
        fig.colorbar(im, ax=ax, shrink=0.8, label=label)
        _style_map_axes(ax, names[2])
    _save(fig, path, dpi)
    return fig


def _pretty(key: str) -> str:
    if key == "loss":
        return "training loss"
    if key.startswith("val_"):
        return f"validation {key[4:]}"
    return key


def plot_loss(
    history: Mapping[str, Sequence[float]],
    *,
    keys: Sequence[str] | None = None,
    monitor: str | None = None,
    log: bool = False,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Any:
    """Plot training curves per epoch and mark the best epoch; return the Figure.

    Parameters
    ----------
    history : mapping of name to per-epoch values
        E.g. a model's ``history_``: ``{"loss": [...], "val_loss": [...], "rmse": [...]}``.
    keys : sequence of str, optional
        Curves to draw (default: every entry whose name contains ``"loss"``, else all).
    monitor : str, optional
        Curve whose minimum is the best epoch (default ``"val_loss"``, else ``"loss"``, else the
        first curve), marked with a dashed line and a point.
    log : bool
        Logarithmic y axis (all values must be positive).
    path : path, optional
        Write the figure as a PNG there.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> fig = plot_loss({"loss": [1.0, 0.5, 0.4], "val_loss": [1.2, 0.6, 0.7]})
    >>> fig.axes[0].get_legend_handles_labels()[1]
    ['training loss', 'validation loss', 'best epoch 2: 0.6']
    """
    if not isinstance(history, Mapping) or not history:
        raise InputError("history must be a non-empty mapping of name to per-epoch values")
    if keys is None:
        keys = [k for k in history if "loss" in str(k)] or list(history)
    else:
        keys = list(keys)
        missing = [k for k in keys if k not in history]
        if missing:
            raise InputError(f"history has no {missing[0]!r}; it has {list(history)}")
    if monitor is None:
        monitor = next((k for k in ("val_loss", "loss") if k in history), keys[0])
    elif monitor not in history:
        raise InputError(f"monitor {monitor!r} not in history; it has {list(history)}")
    curves = {}
    for key in {*keys, monitor}:
        values = np.asarray(history[key], dtype=np.float64)
        if values.ndim != 1 or values.size == 0:
            raise InputError(f"history[{key!r}] must be a non-empty list of numbers per epoch")
        if log and np.any(values[np.isfinite(values)] <= 0):
            raise InputError(f"log=True needs positive values; history[{key!r}] has values <= 0")
        curves[key] = values
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure(1, 1, panel=4.5)
    ax = axes[0][0]
    for key in keys:
        values = curves[key]
        ax.plot(np.arange(1, values.size + 1), values, marker="o", ms=3, label=_pretty(key))
    mon = curves[monitor]
    if np.isfinite(mon).any():
        best = int(np.nanargmin(mon))
        ax.axvline(best + 1, color="0.4", ls="--", lw=1)
        ax.plot(
            [best + 1], [mon[best]], "k*", ms=12, label=f"best epoch {best + 1}: {mon[best]:.4g}"
        )
    if log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss" if all("loss" in str(k) for k in keys) else "value")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path, dpi)
    return fig


def class_table(
    classes: Mapping[Any, tuple[str, Any] | str] | None, codes: np.ndarray
) -> tuple[np.ndarray, list[str], list[tuple[float, float, float, float]]]:
    """Return the sorted class codes, their names and RGBA colours; check ``codes`` against them.

    ``classes`` maps a code to ``(name, colour)`` or to a name (coloured from ``tab10``); by
    default every code found in ``codes`` is a class named by its value. A finite code that is
    not a class raises :class:`InputError`.

    Examples
    --------
    >>> import numpy as np
    >>> class_table({1: ("water", "blue"), 0: "land"}, np.array([0.0, 1.0, np.nan]))[:2]
    (array([0., 1.]), ['land', 'water'])
    """
    import matplotlib
    from matplotlib.colors import to_rgba

    present = np.unique(codes[np.isfinite(codes)])
    if classes is None:
        keys = [int(c) if float(c).is_integer() else float(c) for c in present]
        classes = {k: str(k) for k in keys}
    if not isinstance(classes, Mapping) or not classes:
        raise InputError("classes must be a non-empty mapping of code to (name, colour)")
    keys = sorted(classes, key=float)
    unknown = sorted(set(present.tolist()) - {float(k) for k in keys})
    if unknown:
        raise InputError(
            f"class map has codes {unknown} that are not in classes {keys}; add them to classes"
        )
    default = matplotlib.colormaps["tab10"]
    labels, colours = [], []
    for i, key in enumerate(keys):
        entry = classes[key]
        if isinstance(entry, str):
            name, colour = entry, default(i % 10)
        else:
            try:
                name, colour = entry
            except (TypeError, ValueError) as err:
                raise InputError(
                    f"classes[{key!r}] must be a name or (name, colour); got {entry!r}"
                ) from err
        try:
            colours.append(to_rgba(colour))
        except ValueError as err:
            raise InputError(f"classes[{key!r}] has an unknown colour {colour!r}") from err
        labels.append(str(name))
    return np.asarray([float(k) for k in keys]), labels, colours


def plot_classes(
    da: xr.DataArray | np.ndarray,
    classes: Mapping[Any, tuple[str, str] | str] | None = None,
    *,
    title: str | None = None,
    fractions: bool = True,
    time: Any = None,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Any:
    """Draw a class map with one colour per class and a legend; return the Figure.

    This function computes (it reads the map to check its values and count the classes).

    Parameters
    ----------
    da : DataArray or numpy array
        Class codes ``(y, x)`` (a ``band`` dimension of length one is dropped); NaN is no data
        and left blank.
    classes : mapping of code to (name, colour) or to name, optional
        E.g. ``{0: ("non built-up", "#d9d9d9"), 1: ("built-up", "#d7301f")}``; colours are any
        matplotlib colour, and a bare name gets a colour from ``tab10``. By default every code
        in the map, named by its value.
    title : str, optional
        Figure title (default: the array's name).
    fractions : bool
        Append each class's share of the valid pixels to its legend entry.
    time : label, optional
        Time step to draw when ``da`` has a ``time`` dimension.
    path : path, optional
        Write the figure as a PNG there.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> codes = np.array([[0, 0, 1], [0, 1, 1]])
    >>> fig = plot_classes(codes, {0: ("non built-up", "#d9d9d9"), 1: ("built-up", "#d7301f")})
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['non built-up (50.0 %)', 'built-up (50.0 %)']
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    img = _squeeze_image(da, "class map", time)
    (codes,) = _load(img)
    values, labels, colours = class_table(classes, codes)
    edges = np.concatenate([[values[0] - 0.5], (values[:-1] + values[1:]) / 2, [values[-1] + 0.5]])
    norm = BoundaryNorm(edges, ncolors=len(values))
    valid = np.isfinite(codes)
    total = max(int(valid.sum()), 1)
    fig, axes = _figure(1, 1, panel=4.5)
    ax = axes[0][0]
    ax.imshow(
        np.ma.masked_invalid(codes),
        cmap=ListedColormap(colours),
        norm=norm,
        extent=_extent(img),
        interpolation="nearest",
    )
    handles = []
    for value, name, colour in zip(values, labels, colours, strict=True):
        share = f" ({100 * np.count_nonzero(codes[valid] == value) / total:.1f} %)"
        handles.append(Patch(facecolor=colour, edgecolor="0.3", label=name + share * fractions))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    default_title = str(getattr(da, "name", None) or "") if title is None else title
    _style_map_axes(ax, default_title)
    _save(fig, path, dpi)
    return fig


def plot_bands(
    da: xr.DataArray,
    bands: Sequence[str] | None = None,
    *,
    cmap: str = "viridis",
    stretch: tuple[float, float] = (2, 98),
    ncols: int = 4,
    time: Any = None,
    path: str | os.PathLike | None = None,
    dpi: int = 100,
) -> Any:
    """Draw each band of a cube in its own panel with its own colour bar; return the Figure.

    A quick look at every input of a fused cube: each panel is stretched between the band's own
    ``stretch`` percentiles. This function computes (it reads the bands, in one compute).

    Parameters
    ----------
    da : DataArray
        Cube with dims ``(band, y, x)`` (a ``time`` dimension needs ``time=`` unless of length
        one).
    bands : sequence of str, optional
        Bands to draw, in order (default: all).
    cmap : str
        Colour map.
    stretch : (low, high)
        Percentiles mapped to the ends of each panel's colour scale.
    ncols : int
        Panels per row.
    time : label, optional
        Time step to draw.
    path : path, optional
        Write the figure as a PNG there.
    dpi : int
        Resolution of the PNG.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.random.default_rng(0).random((3, 5, 6)), dims=("band", "y", "x"),
    ...                     coords={"band": ["s2:B04", "s2:B08", "viirs:avg_rad"]})
    >>> fig = plot_bands(cube, ["s2:B08", "viirs:avg_rad"])
    >>> [ax.get_title() for ax in fig.axes if ax.images]
    ['s2:B08', 'viirs:avg_rad']
    """
    if not isinstance(da, xr.DataArray) or "band" not in da.dims:
        raise InputError("expected a DataArray with a 'band' dimension (dims ('band', 'y', 'x'))")
    names = [str(b) for b in da.band.values]
    bands = names if bands is None else [bands] if isinstance(bands, str) else list(bands)
    if not bands:
        raise InputError("bands must name at least one band")
    require_bands(names, bands)
    if int(ncols) < 1:
        raise InputError(f"ncols must be at least 1; got {ncols}")
    images = [
        _squeeze_image(da.isel(band=names.index(b)), f"band {b!r}", time).rename(b) for b in bands
    ]
    values = _load(*images)
    ncols = min(int(ncols), len(bands))
    nrows = math.ceil(len(bands) / ncols)
    fig, axes = _figure(nrows, ncols, panel=3.0)
    units = str(da.attrs.get("units", ""))
    for i, ax in enumerate(axes.ravel()):
        if i >= len(bands):
            ax.set_axis_off()
            continue
        low, high = _percentile_limits(values[i], stretch)
        im = ax.imshow(
            values[i],
            cmap=cmap,
            vmin=low,
            vmax=high,
            extent=_extent(images[i]),
            interpolation="nearest",
        )
        fig.colorbar(im, ax=ax, shrink=0.8, label=units)
        _style_map_axes(ax, bands[i])
    _save(fig, path, dpi)
    return fig


def plot_map_row(
    panels: Sequence[tuple[str, Any, Mapping[str, Any]]],
    *,
    title: str | None = None,
    marker_x: int | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 90,
    panel_size: float = 3.0,
) -> Any:
    """Draw images side by side in one row, each under its title; return the Figure.

    Parameters
    ----------
    panels : sequence of (title, image, imshow keywords)
        Each image is ``(y, x)`` or an RGB ``(y, x, 3)`` array, drawn with
        ``imshow(image, interpolation="nearest", **keywords)`` (``cmap``, ``vmin``, ``vmax`` …).
    title : str, optional
        Title of the whole figure.
    marker_x : int, optional
        Column where a dashed vertical line is drawn on every panel (the first column of a
        held-out strip).
    path : path, optional
        Write the figure as a PNG there.
    dpi : int
        Resolution of the figure.
    panel_size : float
        Width of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> fig = plot_map_row([("a", np.zeros((4, 4)), {}), ("b", np.ones((4, 4)), {"cmap": "gray"})],
    ...                    marker_x=2)
    >>> [ax.get_title() for ax in fig.axes]
    ['a', 'b']
    """
    from matplotlib.figure import Figure

    if not panels:
        raise InputError("plot_map_row needs at least one (title, image, keywords) panel")
    for name, image, _ in panels:
        if np.ndim(image) not in (2, 3):
            raise InputError(f"panel {name!r}: expected a (y, x) or (y, x, 3) image")
    size = (panel_size * len(panels), panel_size + 0.4)
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, image, keywords) in zip(axes, panels, strict=True):
        ax.imshow(image, interpolation="nearest", **dict(keywords))
        if marker_x is not None:
            ax.axvline(marker_x - 0.5, color="#ff7f00", lw=1.0, ls="--")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
