"""Quicklooks (RGB stretch, single-band maps, side-by-side panels) and interactive maps.

Plotting computes: the functions here read the data they draw (the lines say so).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xfusion._viz_maps import explore, make_offline, save_html, split_map
from xfusion._viz_panels import (
    plot_bands,
    plot_classes,
    plot_loss,
    plot_map_row,
    plot_panels,
)
from xfusion.errors import BandError, InputError, SourceError
from xfusion.validate import require_bands

__all__ = [
    "explore",
    "make_offline",
    "plot_bands",
    "plot_classes",
    "plot_loss",
    "plot_map_row",
    "plot_panels",
    "plot_rgb",
    "quicklook",
    "rgb_array",
    "save_html",
    "split_map",
]

# Red, green, blue band names of common products, tried in order when ``bands`` is not given.
_RGB_NAMES = (
    ("B4", "B3", "B2"),
    ("B04", "B03", "B02"),
    ("SR_B4", "SR_B3", "SR_B2"),
    ("red", "green", "blue"),
    ("Red", "Green", "Blue"),
)


def _default_rgb(names: Sequence[str]) -> list[str]:
    for triple in _RGB_NAMES:
        if all(b in names for b in triple):
            return list(triple)
    # A fused cube names its bands "source:band"; match on the band part.
    short = {str(n).split(":")[-1]: n for n in names}
    for triple in _RGB_NAMES:
        if all(b in short for b in triple):
            return [short[b] for b in triple]
    if len(names) >= 3:
        return list(names[:3])
    raise BandError(f"need three bands for an RGB image; the cube has {list(names)}")


def rgb_array(
    da: xr.DataArray,
    bands: Sequence[str] | None = None,
    *,
    stretch: tuple[float, float] = (2, 98),
) -> np.ndarray:
    """Return an RGB image ``(y, x, 3)`` in [0, 1] with a per-band percentile stretch.

    Each band is stretched linearly between its ``stretch`` percentiles (NaN ignored); NaN pixels
    are black. This function computes (it reads the three bands).

    Parameters
    ----------
    da : DataArray
        A cube with dims ``(band, y, x)``; a ``time`` dimension of length one is dropped, a longer
        one is reduced by the median (a quick cloud-free-ish view).
    bands : three band names, optional
        Red, green, blue. By default the product's own (``B4/B3/B2``, ``SR_B4/SR_B3/SR_B2``,
        ``red/green/blue``...) or else the first three bands.
    stretch : (low, high)
        Percentiles mapped to 0 and 1.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.random.default_rng(0).random((3, 4, 5)), dims=("band", "y", "x"),
    ...                   coords={"band": ["B4", "B3", "B2"]})
    >>> img = rgb_array(da, stretch=(0, 100))
    >>> img.shape, float(img.min()), float(img.max())
    ((4, 5, 3), 0.0, 1.0)
    """
    if not isinstance(da, xr.DataArray) or "band" not in da.dims:
        raise InputError("expected a DataArray with a 'band' dimension (dims ('band', 'y', 'x'))")
    names = [str(b) for b in da.band.values]
    bands = list(bands) if bands is not None else _default_rgb(names)
    if len(bands) != 3:
        raise InputError(f"an RGB image needs exactly three bands; got {bands}")
    require_bands(names, bands)
    lo, hi = stretch
    if not 0 <= lo < hi <= 100:
        raise InputError(f"stretch must be percentiles 0 <= low < high <= 100; got {stretch}")
    values = _image_values(da.sel(band=bands))
    return np.dstack([_stretch(v, lo, hi) for v in values])


def _image_values(da: xr.DataArray) -> np.ndarray:
    """Read a ``(band, y, x)`` image; a ``time`` dimension is reduced by the NaN-median."""
    extra = [d for d in da.dims if d not in ("time", "band", "y", "x")]
    if extra or "band" not in da.dims:
        raise InputError(f"expected dims ('band', 'y', 'x') (optionally 'time'); got {da.dims}")
    order = [d for d in ("time", "band", "y", "x") if d in da.dims]
    # Read first and reduce in numpy: dask's median would JIT-compile numbagg's kernel, which on
    # first use takes far longer than a quicklook-sized median.
    values = da.transpose(*order).values.astype(np.float64)  # xf: computes the pixels to draw
    if "time" in da.dims:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
            values = np.nanmedian(values, axis=0)
    return values


def _stretch(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    finite = np.isfinite(v)
    if not finite.any():
        return np.zeros_like(v)
    a, b = np.percentile(v[finite], [lo, hi])
    out = (v - a) / (b - a) if b > a else np.zeros_like(v)
    return np.where(finite, np.clip(out, 0.0, 1.0), 0.0)


def _extent(da: xr.DataArray) -> tuple[float, float, float, float] | None:
    if "x" not in da.coords or "y" not in da.coords or da.sizes["x"] < 2 or da.sizes["y"] < 2:
        return None
    x, y = da.x.values, da.y.values
    dx, dy = (x[1] - x[0]) / 2, (y[1] - y[0]) / 2
    return (float(x[0] - dx), float(x[-1] + dx), float(y[-1] + dy), float(y[0] - dy))


def plot_rgb(
    da: xr.DataArray,
    bands: Sequence[str] | None = None,
    *,
    stretch: tuple[float, float] = (2, 98),
    ax: Any = None,
) -> Any:
    """Draw an RGB composite with a percentile stretch; return the matplotlib Axes.

    This function computes (it reads the three bands). See :func:`rgb_array` for ``bands``,
    ``stretch`` and how a ``time`` dimension is handled.

    Parameters
    ----------
    da : DataArray
        Cube with a ``band`` dimension and ``y``/``x``.
    bands : three band names, optional
        Red, green, blue.
    stretch : (low, high)
        Percentiles mapped to black and full intensity.
    ax : matplotlib Axes, optional
        Where to draw; a new figure by default.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from matplotlib.figure import Figure
    >>> da = xr.DataArray(np.random.default_rng(0).random((3, 4, 5)), dims=("band", "y", "x"),
    ...                   coords={"band": ["red", "green", "blue"]})
    >>> ax = plot_rgb(da, ax=Figure().subplots())
    >>> ax.images[0].get_array().shape
    (4, 5, 3)
    """
    img = rgb_array(da, bands, stretch=stretch)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    ax.imshow(img, extent=_extent(da), interpolation="nearest")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    return ax


def quicklook(
    panels: Mapping[str, xr.DataArray],
    path: str | os.PathLike,
    *,
    stretch: tuple[float, float] = (2, 98),
    cmap: str = "magma",
    dpi: int = 100,
) -> Path:
    r"""Write a PNG with the given cubes side by side; return its path.

    A panel with three bands is drawn as an RGB stretch (:func:`rgb_array`); a panel with one
    band as a colour map with a colour bar (stretched between the same percentiles). A ``time``
    dimension is reduced by the median. This function computes (it reads what it draws).

    Parameters
    ----------
    panels : Mapping of title to DataArray
        The panels, left to right.
    path : path
        Output PNG file; its folder must exist.
    stretch : (low, high)
        Percentiles of the colour stretch.
    cmap : str
        Matplotlib colour map of single-band panels.
    dpi : int
        Resolution of the PNG.

    Examples
    --------
    >>> import numpy as np, xarray as xr, tempfile, os
    >>> rng = np.random.default_rng(0)
    >>> rgb = xr.DataArray(rng.random((3, 8, 8)), dims=("band", "y", "x"),
    ...                    coords={"band": ["B4", "B3", "B2"]})
    >>> lights = xr.DataArray(rng.random((1, 4, 4)), dims=("band", "y", "x"))
    >>> out = quicklook({"day": rgb, "night": lights}, os.path.join(tempfile.mkdtemp(), "q.png"))
    >>> out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    True
    """
    from matplotlib.figure import Figure

    if not panels:
        raise InputError("quicklook needs at least one panel")
    path = Path(path)
    fig = Figure(figsize=(4.2 * len(panels), 4.2), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, da) in zip(axes, panels.items(), strict=True):
        if not isinstance(da, xr.DataArray):
            raise InputError(f"panel {title!r} must be a DataArray; got {type(da).__name__}")
        nbands = da.sizes.get("band", 1)
        if nbands == 3:
            plot_rgb(da, stretch=stretch, ax=ax)
        elif nbands == 1:
            img = da if "band" in da.dims else da.expand_dims(band=[str(da.name)])
            v = _image_values(img)[0]
            finite = v[np.isfinite(v)]
            lo, hi = np.percentile(finite, stretch) if finite.size else (0.0, 1.0)
            im = ax.imshow(v, cmap=cmap, vmin=lo, vmax=hi, extent=_extent(da),
                           interpolation="nearest")  # fmt: skip
            fig.colorbar(im, ax=ax, shrink=0.8, label=str(da.attrs.get("units", "")))
        else:
            raise InputError(
                f"panel {title!r} has {nbands} bands; select 3 (RGB) or 1 (map) before plotting"
            )
        ax.set_title(title)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.set_xticks([])
        ax.set_yticks([])
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as err:
        raise SourceError(f"cannot write quicklook to {str(path)!r}: {err}") from err
    return path
