"""Write a scene as tiled Cloud-Optimized GeoTIFFs plus a self-contained STAC catalog.

The layout is the one :meth:`pystac.Catalog.normalize_hrefs` produces, with the COGs beside each
item: ``catalog.json``, ``<cube>/collection.json``, ``<cube>/<item>/<item>.json`` and
``<cube>/<item>/<band>.tif``. Every href is relative, so the folder can be moved or archived.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pystac
import rasterio
import xarray as xr
from pyproj import Transformer

from xfusion._files import writable_dir
from xfusion.bands import band_kinds
from xfusion.errors import InputError
from xfusion.grids import geobox_of
from xfusion.validate import check_unique_bands, check_unique_times

__all__ = ["write_stac"]

PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/v1.1.0/schema.json"
RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"


def write_stac(
    scene: Mapping[str, xr.DataArray],
    directory: str | os.PathLike,
    *,
    catalog_id: str = "xfusion-synthetic",
    encodings: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    blocksize: int = 256,
) -> Path:
    """Write every cube of ``scene`` as COGs and a STAC catalog; return the catalog path.

    Each cube becomes a :class:`pystac.Collection` (id = the scene key) with one
    :class:`pystac.Item` per time step (one item for cubes without ``time``); each band is one
    tiled, DEFLATE-compressed COG (``blocksize`` square blocks) whose asset key is the band name.
    Items carry ``proj:epsg``, ``proj:transform`` and ``proj:shape``; assets carry
    ``raster:bands`` with ``data_type``, ``nodata`` and, where the encoding gives them, ``scale``
    and ``offset``. A band whose kind (:func:`xfusion.bands.band_kinds`) is ``"categorical"``
    carries ``classification:classes`` (the class values present in the item), a ``"flags"``
    band ``classification:bitfields`` (one field per bit set somewhere in the item), so that
    :func:`xfusion.open_stac` reads the kinds back.

    This function computes: it reads each item's data once (chunked cubes included) to write the
    files.

    Parameters
    ----------
    scene : Mapping of str to DataArray
        Cubes with dims ``(time, band, y, x)`` or ``(band, y, x)`` and a grid, e.g. a
        :class:`~xfusion.datasets.Scene`.
    directory : path
        Folder of the catalog; created if needed.
    catalog_id : str
        The catalog's id.
    encodings : Mapping, optional
        ``{cube: {band: {"dtype", "nodata", "scale", "offset"}}}``: how bands are stored on disk.
        The cube's values are written as they are (rounded to an integer ``dtype``, NaN becoming
        ``nodata``); ``scale`` and ``offset`` are recorded in ``raster:bands`` so that readers
        compute ``value * scale + offset`` (the cube holds digital numbers, as the product
        does). Defaults to ``scene.encodings`` where the scene has them; bands without an
        entry are written as float32 with NaN nodata.
    blocksize : int
        Tile size of the COGs (a multiple of 16).

    Returns
    -------
    pathlib.Path
        Path of ``catalog.json``.

    Raises
    ------
    InputError
        ``scene`` is empty, a cube is not ``([time,] band, y, x)``, a key cannot name a folder,
        a cube repeats a time, or ``blocksize`` is not a positive multiple of 16.
    BandError
        A cube repeats a band name.
    GridError
        A cube has no CRS or no ``x``/``y`` coordinates.

    Every cube is checked before anything is written: on these errors ``directory`` is left
    as it was (not even created).

    Examples
    --------
    >>> import json, tempfile
    >>> from xfusion.datasets import synthetic_scene, write_stac
    >>> path = write_stac(synthetic_scene("downscale", size=20), tempfile.mkdtemp())
    >>> sorted(json.loads(p.read_text())["id"] for p in path.parent.glob("*/collection.json"))
    ['modis', 'tropomi', 'truth_sif']
    >>> item = json.loads(next(path.parent.glob("tropomi/*/*.json")).read_text())
    >>> item["properties"]["proj:epsg"], sorted(item["assets"]), item["assets"]["SIF743"]["href"]
    (32615, ['SIF743'], './SIF743.tif')
    """
    if not isinstance(scene, Mapping) or not scene:
        raise InputError(
            f"scene must be a non-empty mapping of names to cubes; got {type(scene).__name__}"
        )
    if blocksize <= 0 or blocksize % 16:
        raise InputError(f"blocksize must be a positive multiple of 16; got {blocksize}")
    encodings = encodings if encodings is not None else getattr(scene, "encodings", {}) or {}
    descriptions = getattr(scene, "descriptions", {}) or {}
    for key, cube in scene.items():  # every cube is checked before anything is written
        _check_cube(key, cube)
    root = writable_dir(directory, "cannot write a STAC catalog to {path}: {reason}")
    default_time = _default_time(scene)
    catalog = pystac.Catalog(
        id=catalog_id,
        description=f"synthetic {getattr(scene, 'recipe', 'xfusion')} scene written by xfusion",
    )
    for key, cube in scene.items():
        collection = _write_collection(
            key,
            cube,
            root,
            encodings.get(key, {}),
            descriptions.get(key, key),
            default_time,
            blocksize,
        )
        catalog.add_child(collection)
    catalog.normalize_hrefs(str(root))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def _check_cube(key: str, cube: Any) -> None:
    if not isinstance(cube, xr.DataArray):
        raise InputError(f"scene[{key!r}] must be an xarray.DataArray; got {type(cube).__name__}")
    dims = set(cube.dims)
    if dims not in ({"band", "y", "x"}, {"time", "band", "y", "x"}):
        raise InputError(
            f"scene[{key!r}] has dims {cube.dims}; expected ('time', 'band', 'y', 'x') or "
            "('band', 'y', 'x')"
        )
    if not str(key).replace("_", "").replace("-", "").isalnum():
        raise InputError(
            f"scene key {key!r} must be letters, digits, '_' or '-' (it names folders)"
        )
    check_unique_bands(cube, f"scene[{key!r}]")
    if "time" in cube.dims:
        check_unique_times(cube, f"scene[{key!r}]")
    geobox_of(cube)  # GridError when the cube has no CRS or no x/y coordinates


def _default_time(scene: Mapping[str, xr.DataArray]) -> pd.Timestamp:
    """Return the datetime for items of static cubes: the scene's earliest acquisition."""
    starts = [pd.Timestamp(c.time.values.min()) for c in scene.values() if "time" in c.dims]
    return min(starts) if starts else pd.Timestamp("2000-01-01")


def _write_collection(
    key: str,
    cube: xr.DataArray,
    root: Path,
    encoding: Mapping[str, Mapping[str, Any]],
    description: str,
    default_time: pd.Timestamp,
    blocksize: int,
) -> pystac.Collection:
    gbox = geobox_of(cube)
    epsg = gbox.crs.epsg
    if epsg is None:
        raise InputError(
            f"scene[{key!r}] has a CRS without an EPSG code; STAC items need proj:epsg"
        )
    geometry, bbox = _footprint(gbox)
    a = gbox.affine
    proj = {
        "proj:epsg": int(epsg),
        "proj:transform": [a.a, a.b, a.c, a.d, a.e, a.f],
        "proj:shape": [int(gbox.height), int(gbox.width)],
    }
    bands = [str(b) for b in cube.band.values]
    kinds = list(band_kinds(cube).values())
    times = [pd.Timestamp(t) for t in cube.time.values] if "time" in cube.dims else [default_time]
    items = []
    used: set[str] = set()
    for i, when in enumerate(times):
        item_id = f"{key}_{when:%Y%m%d}"
        if item_id in used:
            item_id = f"{item_id}_{i}"
        used.add(item_id)
        layer = cube.isel(time=i) if "time" in cube.dims else cube
        data = layer.transpose("band", "y", "x").values  # xf: computes one item to write its files
        item = pystac.Item(
            id=item_id,
            geometry=geometry,
            bbox=bbox,
            datetime=when.to_pydatetime(),
            properties=dict(proj),
            stac_extensions=[PROJECTION_SCHEMA, RASTER_SCHEMA]
            + ([CLASSIFICATION_SCHEMA] if set(kinds) - {"continuous"} else []),
        )
        folder = root / key / item_id
        folder.mkdir(parents=True, exist_ok=True)
        for b, band in enumerate(bands):
            enc = dict(encoding.get(band, {}))
            path = folder / f"{band}.tif"
            raster_band = _write_cog(path, data[b], gbox, enc, blocksize, where=f"{key}/{band}")
            if cube.attrs.get("units"):
                raster_band["unit"] = cube.attrs["units"]
            raster_band.update(_classification(data[b], kinds[b]))
            item.add_asset(
                band,
                pystac.Asset(
                    href=str(path.resolve()),
                    media_type=pystac.MediaType.COG,
                    roles=["data"],
                    title=band,
                    extra_fields={"raster:bands": [raster_band]},
                ),
            )
        items.append(item)
    extent = pystac.Extent(
        pystac.SpatialExtent([bbox]),
        pystac.TemporalExtent([[min(times).to_pydatetime(), max(times).to_pydatetime()]]),
    )
    collection = pystac.Collection(
        id=key,
        description=description,
        extent=extent,
        license="CC0-1.0",
        stac_extensions=[PROJECTION_SCHEMA, RASTER_SCHEMA],
    )
    collection.add_items(items)
    return collection


def _classification(values: np.ndarray, kind: str) -> dict[str, Any]:
    """Return the classification-extension fields of a class or flag band (none if continuous)."""
    if kind == "continuous":
        return {}
    present = np.unique(values[np.isfinite(values)]).astype(np.int64)
    if kind == "categorical":
        return {
            "classification:classes": [{"value": int(v), "name": f"class_{v}"} for v in present]
        }
    union = int(np.bitwise_or.reduce(present)) if present.size else 0
    return {
        "classification:bitfields": [
            {
                "name": f"bit_{bit}",
                "offset": bit,
                "length": 1,
                "classes": [{"value": 0, "name": "unset"}, {"value": 1, "name": "set"}],
            }
            for bit in range(max(union.bit_length(), 1))
            if union >> bit & 1 or union == 0
        ]
    }


def _footprint(gbox) -> tuple[dict[str, Any], list[float]]:
    """Return the grid's outline in longitude/latitude (edges densified) and its bbox."""
    left, bottom, right, top = gbox.boundingbox
    t = np.linspace(0.0, 1.0, 9)[:-1]
    xs = np.concatenate([left + (right - left) * t, np.full(8, right), right - (right - left) * t,
                         np.full(8, left)])  # fmt: skip
    ys = np.concatenate([np.full(8, top), top - (top - bottom) * t, np.full(8, bottom),
                         bottom + (top - bottom) * t])  # fmt: skip
    to_lonlat = Transformer.from_crs(gbox.crs.to_wkt(), "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(xs, ys)
    ring = [[float(x), float(y)] for x, y in zip(lon, lat, strict=True)]
    geometry = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    return geometry, [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max())]


def _write_cog(
    path: Path, values: np.ndarray, gbox, enc: dict[str, Any], blocksize: int, *, where: str
) -> dict[str, Any]:
    """Encode one band and write it as a COG; return its ``raster:bands`` entry."""
    dtype = np.dtype(enc.get("dtype", "float32"))
    scale = enc.get("scale")
    offset = enc.get("offset")
    stored = values.astype(np.float64)
    missing = np.isnan(stored)
    if np.issubdtype(dtype, np.integer):
        nodata = enc.get("nodata")
        if missing.any() and nodata is None:
            raise InputError(
                f"band {where} has NaN but is stored as {dtype} without a nodata value; "
                "give 'nodata' in its encoding"
            )
        info = np.iinfo(dtype)
        stored = np.clip(np.rint(np.where(missing, 0, stored)), info.min, info.max).astype(dtype)
        if nodata is not None:
            stored[missing] = nodata
    else:
        nodata = enc.get("nodata", float("nan"))
        stored = stored.astype(dtype)
    profile = {
        "driver": "COG",
        "width": int(gbox.width),
        "height": int(gbox.height),
        "count": 1,
        "dtype": dtype.name,
        "crs": f"EPSG:{gbox.crs.epsg}",
        "transform": gbox.affine,
        "nodata": nodata,
        "blocksize": blocksize,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(stored, 1)
    entry: dict[str, Any] = {"data_type": dtype.name}
    if nodata is not None:
        entry["nodata"] = "nan" if isinstance(nodata, float) and np.isnan(nodata) else nodata
    if scale is not None:
        entry["scale"] = scale
    if offset is not None:
        entry["offset"] = offset
    return entry
