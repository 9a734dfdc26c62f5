"""Interactive Leaflet maps of cubes (folium) that work offline.

A layer is rendered once: the cube is warped onto a Web-Mercator grid of at most ``max_size``
pixels a side (what Leaflet displays, so the image is pixel-correct), coloured into an RGBA PNG
(NaN transparent) and placed with an image overlay on its latitude/longitude bounds. The maps
reference nothing on the network: Leaflet's script and style sheet (vendored in
``xfusion/_static/leaflet``, BSD-2-Clause) are inlined in the page, there is no basemap unless
one is asked for, and the legend and split-screen control are plain HTML/CSS/JS.

Rendering computes (the lines say so): one Dask compute per layer, of the downsampled image only.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import dask
import dask.array
import jinja2
import numpy as np
import xarray as xr

from xfusion._viz_panels import class_table, select_time
from xfusion.errors import BandError, InputError, SourceError
from xfusion.grids import geobox_of
from xfusion.validate import require_bands

__all__ = ["explore", "make_offline", "save_html", "split_map"]

_STATIC = Path(__file__).resolve().parent / "_static" / "leaflet"

# Red, green, blue band names of common products, tried when a cube has more than three bands.
_RGB_NAMES = (
    ("B4", "B3", "B2"),
    ("B04", "B03", "B02"),
    ("SR_B4", "SR_B3", "SR_B2"),
    ("red", "green", "blue"),
    ("Red", "Green", "Blue"),
)

# Options of one layer that may differ between the entries of ``layers=``.
_LAYER_OPTIONS = frozenset(
    {
        "bands",
        "cmap",
        "vmin",
        "vmax",
        "stretch",
        "time",
        "opacity",
        "resampling",
        "legend",
        "classes",
    }
)


# --------------------------------------------------------------------------------------------
# Offline page assets
# --------------------------------------------------------------------------------------------


@cache
def _leaflet_assets() -> tuple[str, str]:
    """Leaflet's script and its style sheet with the control images inlined as data URIs."""
    try:
        js = (_STATIC / "leaflet.js").read_text(encoding="utf-8")
        css = (_STATIC / "leaflet.css").read_text(encoding="utf-8")
        for png in ("layers.png", "layers-2x.png"):
            data = base64.b64encode((_STATIC / "images" / png).read_bytes()).decode("ascii")
            css = css.replace(f"url(images/{png})", f"url(data:image/png;base64,{data})")
    except OSError as err:  # a broken installation, not a user mistake, but say what is missing
        raise SourceError(
            f"xfusion's vendored Leaflet files are missing in {_STATIC}: {err}"
        ) from err
    return js, css


def _raw_element(content: str) -> Any:
    """Return a branca element rendering ``content`` verbatim (no template syntax is read)."""
    from branca.element import Element

    element = Element()
    element._template = jinja2.Template("{{ this.content }}")
    element.content = content
    return element


def make_offline(m: Any) -> Any:
    """Make a folium map's page self-contained: Leaflet inlined, no CDN links.

    folium's pages load Leaflet, jQuery, Bootstrap and Font Awesome from CDNs; the maps made
    here need only Leaflet, so its script and style sheet are written into the page and the
    other links are dropped. Maps from :func:`explore` and :func:`split_map` are already
    offline; this is for a map made with ``folium.Map`` directly. Tile layers (a basemap) still
    need the network.

    Parameters
    ----------
    m : folium.Map
        The map, changed in place.

    Returns
    -------
    folium.Map
        The same map.

    Examples
    --------
    >>> import folium
    >>> m = make_offline(folium.Map(tiles=None))
    >>> html = m.get_root().render()
    >>> "cdn.jsdelivr.net" in html, "Leaflet 1.9.4" in html
    (False, True)
    """
    import folium

    if not isinstance(m, folium.Map):
        raise InputError(f"expected a folium.Map; got {type(m).__name__}")
    figure = m.get_root()
    # A map rendered before already has its CDN links in the page header.
    for name, _ in [*folium.Map.default_js, *folium.Map.default_css]:
        figure.header._children.pop(name, None)
    m.default_js = []
    m.default_css = []
    js, css = _leaflet_assets()
    figure.header.add_child(_raw_element(f"<style>{css}</style>"), name="xf_leaflet_css")
    figure.header.add_child(_raw_element(f"<script>{js}</script>"), name="xf_leaflet_js")
    return m


def save_html(m: Any, path: str | os.PathLike, *, inline: bool = True) -> Path:
    """Write a folium map to a standalone HTML file; return its path.

    Parameters
    ----------
    m : folium.Map
        The map.
    path : path
        Output ``.html`` file; its folder must exist.
    inline : bool
        Inline Leaflet so that the file opens without a network (:func:`make_offline`); with
        ``False`` the page is written as folium made it.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import folium, os, tempfile
    >>> out = save_html(folium.Map(tiles=None), os.path.join(tempfile.mkdtemp(), "map.html"))
    >>> "https://cdn" in out.read_text()
    False
    """
    import folium

    if not isinstance(m, folium.Map):
        raise InputError(f"expected a folium.Map; got {type(m).__name__}")
    if inline:
        make_offline(m)
    path = Path(path)
    try:
        path.write_text(m.get_root().render(), encoding="utf-8")
    except OSError as err:
        raise SourceError(f"cannot write the map to {str(path)!r}: {err}") from err
    return path


# --------------------------------------------------------------------------------------------
# Rendering a cube to an image on a Web-Mercator grid
# --------------------------------------------------------------------------------------------


def _select(da: xr.DataArray, bands: Any, time: Any) -> tuple[xr.DataArray, list[int]]:
    """Select what to draw: the ``(band, y, x)`` cube at one time and one or three band positions.

    The bands are picked later, after the display pixels are, so that an in-memory cube is not
    copied whole.
    """
    if not isinstance(da, xr.DataArray):
        raise InputError(f"expected an xarray.DataArray cube; got {type(da).__name__}")
    if "band" not in da.dims:
        if set(da.dims) - {"time"} != {"y", "x"}:
            raise InputError(f"expected dims ('band', 'y', 'x') or ('y', 'x'); got {da.dims}")
        if "band" in da.coords:  # a band picked with .sel(band=...) keeps its name
            da = da.expand_dims("band")
        else:
            da = da.expand_dims(band=[str(da.name) if da.name is not None else "value"])
    da = select_time(da, time, "cube")
    extra = [d for d in da.dims if d not in ("band", "y", "x")]
    if extra:
        raise InputError(f"expected dims ('time', 'band', 'y', 'x'); got extra dims {extra}")
    names = [str(b) for b in da.band.values]
    if bands is None:
        if len(names) in (1, 3):
            bands = names
        else:
            short = {n.split(":")[-1]: n for n in names}
            found = [t for t in _RGB_NAMES if all(b in short for b in t)]
            if not found:
                raise BandError(
                    f"cube has {len(names)} bands {names}; choose one (colour map) or three "
                    "(red, green, blue) with bands=[...]"
                )
            bands = [short[b] for b in found[0]]
    elif isinstance(bands, str):
        bands = [bands]
    bands = list(bands)
    if len(bands) not in (1, 3):
        raise InputError(f"bands must name one band (colour map) or three (RGB); got {bands}")
    require_bands(names, bands)

    # Positions, not labels: band labels may be numbers while ``bands`` holds their names.
    return da.transpose("band", "y", "x"), [names.index(b) for b in bands]


def _render(
    da: xr.DataArray, bands: list[int], *, max_size: int, resampling: str
) -> tuple[np.ndarray, list[list[float]]]:
    """Warp onto a Web-Mercator grid of at most ``max_size`` px a side; values and lat/lon bounds.

    Leaflet stretches an image overlay linearly in Web-Mercator between its corners, so an image
    on an axis-aligned EPSG:3857 grid is drawn pixel-correct; that grid's corners are exact in
    latitude/longitude because the projection is separable.
    """
    from odc.geo.xr import xr_reproject

    if int(max_size) < 1:
        raise InputError(f"max_size must be a positive number of pixels; got {max_size}")
    gbox = geobox_of(da)
    dst = gbox.to_crs("EPSG:3857", tight=True)
    if max(dst.shape) > int(max_size):
        # zoom_to rounds the other side up, which can overshoot by a pixel: step down until it fits
        full, target = dst, int(max_size)
        dst = full.zoom_to(target)
        while max(dst.shape) > int(max_size) and target > 1:
            target -= 1
            dst = full.zoom_to(target)
    if resampling == "nearest":
        warped = _nearest(da, bands, gbox, dst)
    else:
        sel = da.isel(band=bands).astype(np.float32)
        warped = xr_reproject(sel, dst, resampling=resampling).data
    values = np.asarray(dask.compute(warped)[0], dtype=np.float64)  # xf: computes display image
    bb = dst.extent.to_crs("EPSG:4326").boundingbox
    return values, [[bb.bottom, bb.left], [bb.top, bb.right]]


def _apply(t: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply an affine transform to coordinate arrays."""
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f


def _nearest(da: xr.DataArray, bands: list[int], src: Any, dst: Any) -> Any:
    """Gather the source pixel under each display pixel centre (exact transform, lazy).

    Unlike a GDAL warp run chunk by chunk, the answer does not depend on the chunking.
    """
    from pyproj import Transformer

    h, w = dst.shape
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    x, y = _apply(dst.affine, cols, rows)
    to_src = Transformer.from_crs(dst.crs.to_wkt(), src.crs.to_wkt(), always_xy=True)
    sx, sy = to_src.transform(x, y)
    col, row = _apply(~src.affine, np.asarray(sx), np.asarray(sy))
    ix, iy = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
    inside = (ix >= 0) & (ix < src.width) & (iy >= 0) & (iy < src.height)
    plain = xr.DataArray(da.data, dims=da.dims)
    lazy = isinstance(da.data, dask.array.Array)
    # Lazy: drop the other bands first (free); in memory: gather pixels first (no full copy).
    picked = plain.isel(band=bands) if lazy else plain
    picked = picked.isel(
        y=xr.DataArray(np.where(inside, iy, 0), dims=("row", "col")),
        x=xr.DataArray(np.where(inside, ix, 0), dims=("row", "col")),
    )
    picked = (picked if lazy else picked.isel(band=bands)).astype(np.float32)
    return picked.where(xr.DataArray(inside, dims=("row", "col"))).transpose("band", ...).data


def _limits(
    images: Sequence[np.ndarray], vmin: Any, vmax: Any, stretch: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-band display limits: given, or percentiles of the finite values of all ``images``."""
    nbands = images[0].shape[0]
    lo, hi = (float(s) for s in stretch)
    if not 0 <= lo < hi <= 100:
        raise InputError(f"stretch must be percentiles 0 <= low < high <= 100; got {stretch}")
    low, high = np.zeros(nbands), np.ones(nbands)
    for b in range(nbands):
        finite = np.concatenate([img[b][np.isfinite(img[b])] for img in images])
        if finite.size:
            low[b], high[b] = np.percentile(finite, [lo, hi])
    if vmin is not None:
        low = np.broadcast_to(np.asarray(vmin, dtype=np.float64), (nbands,)).copy()
    if vmax is not None:
        high = np.broadcast_to(np.asarray(vmax, dtype=np.float64), (nbands,)).copy()
    return low, high


def _rgba(values: np.ndarray, low: np.ndarray, high: np.ndarray, cmap: str) -> np.ndarray:
    """``(band, y, x)`` values to an RGBA uint8 image; NaN transparent."""
    import matplotlib

    span = np.where(high > low, high - low, 1.0)[:, None, None]
    scaled = np.clip((values - low[:, None, None]) / span, 0.0, 1.0)
    valid = np.isfinite(values).all(axis=0)
    if values.shape[0] == 1:
        rgba = matplotlib.colormaps[cmap](np.nan_to_num(scaled[0]))
    else:
        rgba = np.dstack([*np.nan_to_num(scaled), np.ones(values.shape[1:])])
    rgba[..., 3] = np.where(valid, 1.0, 0.0)
    return np.round(rgba * 255).astype(np.uint8)


def _class_rgba(codes: np.ndarray, values: np.ndarray, colours: Sequence[Any]) -> np.ndarray:
    """Class codes ``(y, x)`` to an RGBA uint8 image; NaN transparent."""
    rgba = np.zeros((*codes.shape, 4))
    for value, colour in zip(values, colours, strict=True):
        rgba[codes == value] = colour
    return np.round(rgba * 255).astype(np.uint8)


def _class_legend_html(caption: str, labels: Sequence[str], colours: Sequence[Any]) -> str:
    from matplotlib.colors import to_hex

    rows = "".join(
        f'<div><span style="display:inline-block;width:12px;height:12px;margin-right:6px;'
        f'vertical-align:middle;border:1px solid #555;background:{to_hex(c)}"></span>'
        f"{_escape(label)}</div>"
        for label, c in zip(labels, colours, strict=True)
    )
    return (
        '<div style="background:rgba(255,255,255,0.85);padding:4px 8px;border-radius:4px;'
        'font:12px sans-serif">'
        f'<div style="font-weight:bold;margin-bottom:2px">{_escape(caption)}</div>{rows}</div>'
    )


def _colourise(
    images: Sequence[np.ndarray], spec: Mapping[str, Any], caption: str
) -> tuple[list[np.ndarray], str | None]:
    """Colour display images on one shared scale; return the RGBA images and the legend HTML."""
    if spec["classes"] is not None:
        if images[0].shape[0] != 1:
            raise InputError("classes= colours one band of class codes; choose it with bands=...")
        if spec["resampling"] not in ("nearest", "mode"):
            raise InputError(
                f"class codes need resampling 'nearest' or 'mode'; got {spec['resampling']!r}"
            )
        codes = np.concatenate([img[0].ravel() for img in images])
        values, labels, colours = class_table(spec["classes"], codes)
        rgbas = [_class_rgba(img[0], values, colours) for img in images]
        legend = _class_legend_html(caption, labels, colours)
    else:
        low, high = _limits(images, spec["vmin"], spec["vmax"], spec["stretch"])
        rgbas = [_rgba(img, low, high, spec["cmap"]) for img in images]
        legend = None
        if images[0].shape[0] == 1:
            legend = _legend_html(caption, spec["cmap"], float(low[0]), float(high[0]))
    return rgbas, legend if spec["legend"] else None


def _legend_html(caption: str, cmap: str, low: float, high: float) -> str:
    import matplotlib
    from matplotlib.colors import to_hex

    colours = matplotlib.colormaps[cmap](np.linspace(0, 1, 11))
    stops = ", ".join(f"{to_hex(c)} {i * 10}%" for i, c in enumerate(colours))
    mid = (low + high) / 2
    ticks = "".join(
        f'<span style="flex:1;text-align:{a}">{_tick(v)}</span>'
        for v, a in ((low, "left"), (mid, "center"), (high, "right"))
    )
    return (
        '<div style="background:rgba(255,255,255,0.85);padding:4px 8px;border-radius:4px;'
        'font:12px sans-serif;width:200px">'
        f'<div style="font-weight:bold;margin-bottom:2px">{_escape(caption)}</div>'
        f'<div style="height:12px;background:linear-gradient(to right, {stops})"></div>'
        f'<div style="display:flex">{ticks}</div></div>'
    )


def _tick(value: float) -> str:
    """Format a legend tick: thousands separated, small numbers with four significant digits."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _escape(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _html_control(html: str, position: str, class_name: str) -> Any:
    """Return a Leaflet control showing fixed HTML (a legend, a label)."""
    from branca.element import MacroElement

    control = MacroElement()
    control._name = "HtmlControl"
    control._template = jinja2.Template(
        """
        {% macro script(this, kwargs) %}
            var {{ this.get_name() }} = L.control({position: {{ this.position|tojson }}});
            {{ this.get_name() }}.onAdd = function () {
                var div = L.DomUtil.create("div", {{ this.class_name|tojson }});
                div.innerHTML = {{ this.html|tojson }};
                return div;
            };
            {{ this.get_name() }}.addTo({{ this._parent.get_name() }});
        {% endmacro %}
        """
    )
    control.html, control.position, control.class_name = html, position, class_name
    return control


# --------------------------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------------------------


def _new_map(basemap: Any) -> Any:
    import folium

    m = folium.Map(tiles=None, control_scale=True)
    if basemap is not None:
        folium.TileLayer(basemap, name=str(basemap) if isinstance(basemap, str) else None).add_to(m)
    return make_offline(m)


def _finish(m: Any, bounds: Sequence[Sequence[float]]) -> Any:
    """(Re-)add the layer control after every layer and fit the view to ``bounds``."""
    import folium

    for key, child in list(m._children.items()):
        if isinstance(child, folium.LayerControl):
            del m._children[key]
    folium.LayerControl(collapsed=False).add_to(m)
    m.fit_bounds(bounds)
    return m


def _union(bounds: Sequence[Sequence[Sequence[float]]]) -> list[list[float]]:
    return [
        [min(b[0][0] for b in bounds), min(b[0][1] for b in bounds)],
        [max(b[1][0] for b in bounds), max(b[1][1] for b in bounds)],
    ]


def _layer_name(da: xr.DataArray, cube: xr.DataArray, bands: list[int], name: Any) -> str:
    if name is not None:
        return str(name)
    label = "/".join(str(cube.band.values[i]) for i in bands)
    return f"{da.name} ({label})" if da.name is not None and str(da.name) != label else label


def explore(
    da: xr.DataArray,
    *,
    bands: str | Sequence[str] | None = None,
    cmap: str = "viridis",
    vmin: float | Sequence[float] | None = None,
    vmax: float | Sequence[float] | None = None,
    stretch: tuple[float, float] = (2, 98),
    name: str | None = None,
    basemap: Any = None,
    max_size: int = 1024,
    opacity: float = 1.0,
    time: Any = None,
    layers: Mapping[str, Mapping[str, Any]] | None = None,
    m: Any = None,
    resampling: str = "nearest",
    legend: bool = True,
    classes: Mapping[Any, tuple[str, Any] | str] | None = None,
) -> Any:
    """Show a cube on an interactive Leaflet map (folium) that works offline.

    One band is drawn with a colour map and a colour-bar legend, three bands as an RGB image
    with a per-band percentile stretch; NaN is transparent. The cube is warped onto a
    Web-Mercator grid of at most ``max_size`` pixels a side for display, so any CRS is drawn
    in place. The map has a layer control and is zoomed to the layer; it has no basemap by
    default, and the page inlines Leaflet, so it opens without a network.

    This function computes: it reads the downsampled display image (one compute per layer).

    Parameters
    ----------
    da : DataArray
        Cube with dims ``(band, y, x)`` or ``(y, x)`` and a CRS (see
        :func:`xfusion.grids.geobox_of`); a ``time`` dimension needs ``time=`` unless it has
        length one.
    bands : str or sequence of str, optional
        One band (colour map) or three (red, green, blue). By default the cube's only band, its
        three bands, or the product's own red/green/blue (``B4/B3/B2``, ``SR_B4``...).
    cmap : str
        Matplotlib colour map of a single-band layer.
    vmin, vmax : float or one per band, optional
        Display limits; by default the ``stretch`` percentiles of the displayed image.
    stretch : (low, high)
        Percentiles mapped to the ends of the colour scale when ``vmin``/``vmax`` are not given.
    name : str, optional
        Layer name in the layer control (default: the cube's name and bands).
    basemap : str or xyzservices provider, optional
        A tile basemap such as ``"OpenStreetMap"`` (needs the network); none by default.
    max_size : int
        Largest side of the display image in pixels.
    opacity : float
        Opacity of the layer, 0 to 1.
    time : label, optional
        Time step to show (anything ``da.sel(time=...)`` accepts).
    layers : mapping of name to options, optional
        Several layers of the same cube, e.g.
        ``{"RGB": {"bands": ["B4", "B3", "B2"]}, "NIR": {"bands": "B8", "cmap": "magma"}}``; each
        entry may set ``bands``, ``cmap``, ``vmin``, ``vmax``, ``stretch``, ``time``, ``opacity``,
        ``resampling``, ``legend`` and ``classes``; the other arguments are their defaults.
    m : folium.Map, optional
        Add the layer(s) to this map instead of a new one (``basemap`` is then ignored).
    resampling : str
        Resampling of the display warp (``"nearest"``, ``"average"``, ``"bilinear"``...).
    legend : bool
        Add a legend: a colour bar for a single-band layer, swatches for a class map.
    classes : mapping of code to (name, colour) or to name, optional
        Draw one band of class codes with one colour per class (as in
        :func:`~xfusion._viz_panels.plot_classes`); a code not listed raises
        :class:`~xfusion.errors.InputError`.

    Returns
    -------
    folium.Map

    Examples
    --------
    >>> import numpy as np, xarray as xr, xfusion as xf
    >>> from xfusion.grids import assign_grid
    >>> g = xf.grid((500000, 4000000, 500400, 4000300), "EPSG:32633", 10)
    >>> ndvi = assign_grid(xr.DataArray(np.random.default_rng(0).random((1, 30, 40)),
    ...                                 dims=("band", "y", "x"), coords={"band": ["ndvi"]}), g)
    >>> m = explore(ndvi, cmap="YlGn")
    >>> html = m.get_root().render()
    >>> "L.imageOverlay" in html, "https://cdn" in html
    (True, False)
    """
    import folium

    if not 0 <= float(opacity) <= 1:
        raise InputError(f"opacity must be between 0 and 1; got {opacity}")
    defaults = {
        "bands": bands,
        "cmap": cmap,
        "vmin": vmin,
        "vmax": vmax,
        "stretch": stretch,
        "time": time,
        "opacity": opacity,
        "resampling": resampling,
        "legend": legend,
        "classes": classes,
    }
    if layers is None:
        specs = {name: defaults}
    else:
        if not isinstance(layers, Mapping) or not layers:
            raise InputError("layers must be a non-empty mapping of layer name to options")
        specs = {}
        for key, options in layers.items():
            unknown = set(options) - _LAYER_OPTIONS
            if unknown:
                raise InputError(
                    f"layer {key!r} has unknown options {sorted(unknown)}; "
                    f"expected some of {sorted(_LAYER_OPTIONS)}"
                )
            specs[key] = {**defaults, **options}
    if m is None:
        m = _new_map(basemap)
    elif not isinstance(m, folium.Map):
        raise InputError(f"m must be a folium.Map; got {type(m).__name__}")
    else:
        make_offline(m)
    all_bounds = []
    for layer_name, spec in specs.items():
        cube, idx = _select(da, spec["bands"], spec["time"])
        values, bounds = _render(cube, idx, max_size=max_size, resampling=spec["resampling"])
        label = _layer_name(da, cube, idx, layer_name)
        (rgba,), legend_html = _colourise([values], spec, label)
        folium.raster_layers.ImageOverlay(
            rgba, bounds=bounds, name=label, opacity=float(spec["opacity"])
        ).add_to(m)
        if legend_html is not None:
            _html_control(legend_html, "bottomright", "xf-legend").add_to(m)
        all_bounds.append(bounds)
    return _finish(m, _union(all_bounds))


_SPLIT_TEMPLATE = """
{% macro header(this, kwargs) %}
<style>
  .xf-split-divider {position:absolute;top:0;bottom:0;width:3px;margin-left:-1px;
    background:#fff;box-shadow:0 0 3px rgba(0,0,0,0.6);z-index:800;pointer-events:none}
  .xf-split-range {position:absolute;top:50%;left:0;width:100%;margin:0;z-index:801;
    -webkit-appearance:none;appearance:none;background:transparent;pointer-events:none}
  .xf-split-range::-webkit-slider-thumb {-webkit-appearance:none;pointer-events:auto;
    width:28px;height:28px;border-radius:14px;background:#fff;border:1px solid #555;
    cursor:ew-resize}
  .xf-split-range::-moz-range-thumb {pointer-events:auto;width:28px;height:28px;
    border-radius:14px;background:#fff;border:1px solid #555;cursor:ew-resize}
  .xf-split-label {background:rgba(255,255,255,0.85);padding:2px 6px;border-radius:4px;
    font:bold 13px sans-serif}
</style>
{% endmacro %}
{% macro script(this, kwargs) %}
(function () {
  var map = {{ this._parent.get_name() }};
  var left = map.getPane({{ this.left_pane|tojson }});
  var right = map.getPane({{ this.right_pane|tojson }});
  var container = map.getContainer();
  var divider = L.DomUtil.create("div", "xf-split-divider", container);
  var range = L.DomUtil.create("input", "xf-split-range", container);
  range.type = "range"; range.min = 0; range.max = 1; range.step = "any";
  range.value = {{ this.position|tojson }};
  L.DomEvent.disableClickPropagation(range);
  L.DomEvent.disableScrollPropagation(range);
  // Panning the map while the handle is dragged would move the divider with it.
  range.addEventListener("mousedown", function () { map.dragging.disable(); });
  range.addEventListener("touchstart", function () { map.dragging.disable(); });
  document.addEventListener("mouseup", function () { map.dragging.enable(); });
  document.addEventListener("touchend", function () { map.dragging.enable(); });
  function update() {
    var size = map.getSize();
    var x = size.x * range.value;
    var nw = map.containerPointToLayerPoint([0, 0]);
    var se = map.containerPointToLayerPoint(size);
    var cut = nw.x + x;
    left.style.clip = "rect(" + [nw.y, cut, se.y, nw.x].join("px,") + "px)";
    right.style.clip = "rect(" + [nw.y, se.x, se.y, cut].join("px,") + "px)";
    divider.style.left = x + "px";
  }
  range.addEventListener("input", update);
  map.on("move zoomend resize", update);
  update();
  window.{{ this.get_name() }} = {range: range, update: update};
})();
{% endmacro %}
"""


def split_map(
    left: xr.DataArray,
    right: xr.DataArray,
    *,
    left_name: str = "left",
    right_name: str = "right",
    position: float = 0.5,
    **kwargs: Any,
) -> Any:
    """Compare two cubes on one map with a draggable split-screen divider (works offline).

    The left cube is shown left of the divider and the right cube right of it, on the same
    colour scale: the display limits are the ``stretch`` percentiles of both images together
    (unless ``vmin``/``vmax`` are given), so a change between the two reads directly. Each
    side is rendered as in :func:`explore`; the divider is a small control in the page itself
    (no plugin from a CDN).

    This function computes: it reads the two downsampled display images.

    Parameters
    ----------
    left, right : DataArray
        The cubes (any grids and CRSs), e.g. two years of the same area.
    left_name, right_name : str
        Labels shown in the map's top corners and in the layer control.
    position : float
        Initial place of the divider, as a fraction of the map's width from the left.
    **kwargs
        ``bands``, ``cmap``, ``vmin``, ``vmax``, ``stretch``, ``time``, ``basemap``,
        ``max_size``, ``opacity``, ``resampling``, ``legend`` and ``classes`` as in
        :func:`explore`, applied to both sides.

    Returns
    -------
    folium.Map

    Examples
    --------
    >>> import numpy as np, xarray as xr, xfusion as xf
    >>> from xfusion.grids import assign_grid
    >>> g = xf.grid((500000, 4000000, 500400, 4000300), "EPSG:32633", 10)
    >>> y2015, y2019 = (assign_grid(xr.DataArray(np.full((30, 40), v), dims=("y", "x")), g)
    ...                 for v in (0.2, 0.8))
    >>> m = split_map(y2015, y2019, left_name="2015", right_name="2019", vmin=0, vmax=1)
    >>> "xf-split-range" in m.get_root().render()
    True
    """
    import folium
    from branca.element import MacroElement

    allowed = {
        "bands",
        "cmap",
        "vmin",
        "vmax",
        "stretch",
        "time",
        "basemap",
        "max_size",
        "opacity",
        "resampling",
        "legend",
        "classes",
    }
    unknown = set(kwargs) - allowed
    if unknown:
        raise InputError(
            f"split_map got unknown arguments {sorted(unknown)}; expected some of {sorted(allowed)}"
        )
    opt = {
        "bands": None,
        "cmap": "viridis",
        "vmin": None,
        "vmax": None,
        "stretch": (2, 98),
        "time": None,
        "basemap": None,
        "max_size": 1024,
        "opacity": 1.0,
        "resampling": "nearest",
        "legend": True,
        "classes": None,
        **kwargs,
    }
    if not 0 <= float(opt["opacity"]) <= 1:
        raise InputError(f"opacity must be between 0 and 1; got {opt['opacity']}")
    if not 0 <= float(position) <= 1:
        raise InputError(f"position must be a fraction of the map's width, 0 to 1; got {position}")
    sides = {}
    for side, da in (("left", left), ("right", right)):
        cube, idx = _select(da, opt["bands"], opt["time"])
        names = [str(cube.band.values[i]) for i in idx]
        rendered = _render(cube, idx, max_size=opt["max_size"], resampling=opt["resampling"])
        sides[side] = (names, *rendered)
    if sides["left"][1].shape[0] != sides["right"][1].shape[0]:
        raise InputError(
            f"left has bands {sides['left'][0]} and right {sides['right'][0]}; "
            "draw both with one band or both with three"
        )
    rgbas, legend_html = _colourise(
        [sides["left"][1], sides["right"][1]], opt, f"{left_name} | {right_name}"
    )
    m = _new_map(opt["basemap"])
    control = MacroElement()
    control._name = "SplitControl"
    control._template = jinja2.Template(_SPLIT_TEMPLATE)
    control.position = float(position)
    for side, label, rgba in (("left", left_name, rgbas[0]), ("right", right_name, rgbas[1])):
        pane = f"{control.get_name()}_{side}"
        setattr(control, f"{side}_pane", pane)
        folium.map.CustomPane(pane, z_index=400, pointer_events=False).add_to(m)
        bounds = sides[side][2]
        folium.raster_layers.ImageOverlay(
            rgba, bounds=bounds, name=str(label), opacity=float(opt["opacity"]), pane=pane
        ).add_to(m)
        corner = "topleft" if side == "left" else "topright"
        _html_control(_escape(label), corner, "xf-split-label").add_to(m)
    if legend_html is not None:
        _html_control(legend_html, "bottomright", "xf-legend").add_to(m)
    control.add_to(m)
    return _finish(m, _union([sides["left"][2], sides["right"][2]]))
