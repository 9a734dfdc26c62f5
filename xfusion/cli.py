"""The ``xfusion`` command line: ``xfusion demo``, ``xfusion recipes``.

``xfusion demo`` writes a synthetic scene as a local STAC catalog of COGs, opens it again through
:func:`xfusion.open_stac` (the same path real catalogs take), prints a summary of every source and
writes a quicklook PNG. Mistakes are reported as ``error: <message>`` on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import xarray as xr

from xfusion.errors import SourceError, XFusionError

__all__ = ["RECIPE_TABLE", "main"]

#: The recipes and what each does (one line each).
RECIPE_TABLE: dict[str, str] = {
    "builtup": "Sentinel-2 + VIIRS fused at 1 km, GHSL SMOD >= 2 labels, pixel classifier, "
    "built-up maps per year and change",
    "nightlights": "VIIRS night-light radiance at ~30 m from Landsat 8 daytime bands with a "
    "regression U-Net",
    "cloudmask": "multitemporal cloud masking: forecast the clear background from lagged images, "
    "cluster the differences",
    "water": "surface-water segmentation from SAR (HH, HV), optical and terrain (DEM, HAND)",
    "downscale": "downscale a coarse SIF-like field to 1 km with fine vegetation indices, "
    "keeping the coarse aggregate",
}

# QA band and bits to mask (cloud, cirrus, shadow, dilated cloud) per product, for quicklooks.
_QA_BITS = {"QA_PIXEL": [1, 2, 3, 4], "QA60": [10, 11]}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer; got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``xfusion`` command."""
    parser = argparse.ArgumentParser(
        prog="xfusion",
        description="Lazy, Dask-native satellite data fusion and machine learning on datacubes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="write a synthetic scene as a STAC catalog, open it, summarise it, draw a quicklook",
        description="Write the synthetic scene of RECIPE (default: nightlights) as COGs and a STAC "
        "catalog in OUT/stac, open it with xfusion.open_stac, print a summary of every source and "
        "write a quicklook PNG to OUT.",
    )
    demo.add_argument(
        "recipe", nargs="?", default="nightlights", choices=sorted(RECIPE_TABLE),
        help="which recipe's synthetic scene (default: nightlights)",
    )  # fmt: skip
    demo.add_argument("--out", default="xfusion-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=_positive_int, default=0, help="random seed (default: 0)")
    demo.add_argument(
        "--size", type=_positive_int, default=256,
        help="pixels along each side of the finest grid (default: 256, at least 16)",
    )  # fmt: skip
    demo.set_defaults(func=_demo)
    recipes = sub.add_parser("recipes", help="list the recipes", description="List the recipes.")
    recipes.set_defaults(func=_recipes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xfusion`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Examples
    --------
    >>> main(["recipes"])  # doctest: +ELLIPSIS
    builtup      Sentinel-2 + VIIRS ...
    ...
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except XFusionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _recipes(args: argparse.Namespace) -> int:
    width = max(map(len, RECIPE_TABLE))
    for name, text in RECIPE_TABLE.items():
        print(f"{name:<{width}}  {text}")
    return 0


def _prepare_out(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".xfusion-write-test"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise SourceError(
            f"cannot write to output folder {str(out)!r} ({err.strerror or err}); "
            "expected a writable folder, e.g. --out ./xfusion-demo"
        ) from err
    return out


def _demo(args: argparse.Namespace) -> int:
    # Imported here so that `xfusion --help` and `xfusion recipes` stay fast.
    import xfusion
    from xfusion.datasets import synthetic_scene, write_stac
    from xfusion.viz import quicklook

    out = _prepare_out(Path(args.out))
    scene = synthetic_scene(args.recipe, seed=args.seed, size=args.size)
    catalog = write_stac(scene, out / "stac")
    print(f"wrote {args.recipe!r} scene (seed {args.seed}) as a STAC catalog: {catalog}")
    cubes = {key: xfusion.open_stac(catalog.parent / key / "collection.json") for key in scene}
    print()
    print(summary_table(cubes))
    print()
    panels = _quicklook_panels(cubes)
    png = quicklook(panels, out / f"quicklook_{args.recipe}.png")
    print(f"quicklook: {png}")
    return 0


def _quicklook_panels(cubes: dict[str, xr.DataArray]) -> dict[str, xr.DataArray]:
    """Return an RGB composite of the first optical source next to each single-band source."""
    import xfusion
    from xfusion.viz import _default_rgb

    panels: dict[str, xr.DataArray] = {}
    sources = {k: v for k, v in cubes.items() if not k.startswith("truth_")}
    for key, cube in sources.items():
        names = [str(b) for b in cube.band.values]
        qa = next((q for q in _QA_BITS if q in names), None)
        if qa is not None:
            cube = xfusion.mask_bits(cube, qa, _QA_BITS[qa])
            names = [n for n in names if n != qa]
        try:
            rgb = _default_rgb(names) if len(names) >= 3 else None
        except XFusionError:
            rgb = None
        if rgb is not None and any(n in names for n in ("B4", "SR_B4", "Red", "red")):
            panels[f"{key} RGB (median)"] = cube.sel(band=rgb)
        else:
            panels[f"{key} {names[0]} (median)"] = cube.sel(band=[names[0]])
        if len(panels) == 3:
            break
    return panels


def summary_table(cubes: dict[str, xr.DataArray]) -> str:
    """Return a text table of the cubes: bands, shape, CRS, resolution, time range, valid fraction.

    This function computes (the valid fraction reads every cube once).
    """
    from xfusion.grids import geobox_of

    header = ("source", "bands", "shape (t,b,y,x)", "CRS", "res (m)", "time range", "valid")
    rows = []
    for key, cube in cubes.items():
        names = [str(b) for b in cube.band.values]
        bands = ",".join(names) if len(names) <= 3 else f"{names[0]}..{names[-1]} ({len(names)})"
        gbox = geobox_of(cube)
        res = abs(gbox.resolution.x)
        if "time" in cube.dims:
            t0, t1 = pd.Timestamp(cube.time.values.min()), pd.Timestamp(cube.time.values.max())
            times = f"{t0:%Y-%m-%d}" if t0 == t1 else f"{t0:%Y-%m-%d}..{t1:%Y-%m-%d}"
        else:
            times = "-"
        valid = float(cube.notnull().mean())  # xf: computes the summary's valid fraction
        rows.append(
            (
                key,
                bands,
                "x".join(str(s) for s in cube.shape),
                f"EPSG:{gbox.crs.epsg}",
                f"{res:g}",
                times,
                f"{100 * valid:.1f}%",
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
