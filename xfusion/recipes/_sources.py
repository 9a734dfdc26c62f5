"""Opening a recipe's sources: the synthetic scene as a local STAC catalog, band checks.

Every recipe reads its offline default the same way as real STAC data: the synthetic scene is
written as COGs and a STAC catalog in ``out_dir/stac`` (:func:`write_synthetic`) and opened
back with :func:`xfusion.open_stac`; :func:`open_collections` opens several sources by name from
STAC or Earth Engine in one call. :func:`require_bands` (from :mod:`xfusion.validate`) checks,
before any work, that a cube holds the bands a recipe needs, and :func:`coarsening_factor`
that a coarse source's grid coarsens a fine one's by an integer factor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import xarray as xr

from xfusion.errors import ConfigError, GridError
from xfusion.grids import geobox_of
from xfusion.validate import require_bands  # re-exported: the recipes import it from here

__all__ = [
    "band_names",
    "coarsening_factor",
    "open_collections",
    "require_bands",
    "write_synthetic",
]


def band_names(cube: xr.DataArray) -> list[str]:
    """Return the band names of ``cube`` as strings."""
    return [str(b) for b in cube.band.values]


def write_synthetic(
    scene_name: str, config: Any, out: Path, bands: Mapping[str, Iterable[str]]
) -> tuple[dict[str, xr.DataArray], Path]:
    """Write the synthetic scene's cubes as a STAC catalog in ``out/stac``.

    The scene is :func:`xfusion.datasets.synthetic_scene` ``(scene_name, seed=config.seed,
    size=config.size, difficulty=config.difficulty)``; ``bands`` maps each cube written to the
    bands the recipe reads from it (checked first, :class:`~xfusion.errors.BandError`). The
    cubes are written with their products' encodings (digital numbers, nodata).

    Returns
    -------
    (Scene, Path)
        The scene (the truth included) and the catalog's folder, which holds
        ``<key>/collection.json`` for every key.
    """
    from xfusion.datasets import synthetic_scene, write_stac

    scene = synthetic_scene(
        scene_name, seed=config.seed, size=config.size, difficulty=config.difficulty
    )
    for key, wanted in bands.items():
        require_bands(scene[key], wanted, f"synthetic {scene_name!r} scene's {key!r} cube")
    written = {key: scene[key] for key in bands}
    catalog = write_stac(written, out / "stac", encodings=scene.encodings)
    return scene, catalog.parent


def open_collections(
    source: str,
    reads: Mapping[str, tuple[Any, Iterable[str], Any]],
    *,
    dates: Mapping[str, tuple[str, str]] | None = None,
    filters: Mapping[str, Any] | None = None,
) -> dict[str, xr.DataArray]:
    """Open every source of ``reads``, ``{key: (collection, bands, grid)}``, as a lazy cube.

    ``source`` ``"stac"`` or ``"synthetic"`` (a catalog from :func:`write_synthetic`):
    :func:`xfusion.open_stac` ``(collection, grid=grid, assets=bands)``; ``"ee"``:
    :func:`xfusion.open_ee` ``(collection, grid=grid, bands=bands, filters=filters[key],
    start=, end=)`` with ``dates[key]`` as ``(start, end)``. A ``grid`` of ``None`` reads the
    source on its own grid (STAC).

    Examples
    --------
    >>> import tempfile, xfusion as xf
    >>> scene = xf.datasets.synthetic_scene("builtup", size=100)
    >>> catalog = xf.datasets.write_stac({"viirs": scene["viirs"]}, tempfile.mkdtemp()).parent
    >>> reads = {"lights": (catalog / "viirs" / "collection.json", ["avg_rad"], None)}
    >>> open_collections("stac", reads)["lights"].band.values.tolist()
    ['avg_rad']
    """
    from xfusion.io.ee import open_ee
    from xfusion.io.stac import open_stac

    if source in ("stac", "synthetic"):
        return {k: open_stac(c, grid=g, assets=list(b)) for k, (c, b, g) in reads.items()}
    if source != "ee":
        raise ConfigError(f"source must be one of ('synthetic', 'stac', 'ee'); got {source!r}")
    dates, filters = dates or {}, filters or {}
    cubes = {}
    for key, (collection, bands, grid) in reads.items():
        start, end = dates.get(key, (None, None))
        cubes[key] = open_ee(
            collection, grid=grid, bands=list(bands), filters=filters.get(key), start=start, end=end
        )
    return cubes


def coarsening_factor(fine: xr.DataArray, coarse: xr.DataArray) -> int:
    """Return the integer factor by which ``coarse``'s grid coarsens ``fine``'s.

    The grids must share CRS, origin and extent, with ``factor × factor`` fine pixels in every
    coarse one; otherwise a :class:`~xfusion.errors.GridError` says how they differ.

    Examples
    --------
    >>> import xfusion as xf
    >>> scene = xf.datasets.synthetic_scene("downscale", size=40)
    >>> coarsening_factor(scene["modis"], scene["tropomi"])
    5
    """
    fg, cg = geobox_of(fine), geobox_of(coarse)
    fa, ca = fg.affine, cg.affine
    ratio = ca.a / fa.a
    factor = round(ratio)
    if (
        fg.crs != cg.crs
        or factor < 1
        or abs(ratio - factor) > 1e-6
        or abs(ca.e / fa.e - factor) > 1e-6
        or fg.shape != (cg.shape[0] * factor, cg.shape[1] * factor)
        or abs(ca.c - fa.c) > 1e-6 * abs(fa.a)
        or abs(ca.f - fa.f) > 1e-6 * abs(fa.e)
    ):
        raise GridError(
            "the coarse grid must be the fine grid coarsened by an integer factor (same CRS, "
            f"origin and extent); got fine {fg.shape} at {fa.a} and coarse {cg.shape} at {ca.a} "
            f"in {cg.crs}"
        )
    return factor
