"""The ``xfusion`` command line.

============================================  ==================================================
``xfusion demo``                              the main job: the ``nightlights`` recipe on the
                                              synthetic scene through the STAC path, into
                                              ``xfusion-out/nightlights``
``xfusion demo --all``                        every recipe, each into ``xfusion-out/<recipe>``
``xfusion run RECIPE --config FILE``          a recipe with a TOML configuration
``xfusion run RECIPE --help``                 the recipe's config keys: type, default, meaning
``xfusion recipes``                           list the recipes
``xfusion scene RECIPE``                      write a synthetic scene as STAC, summarise it
============================================  ==================================================

Common options: ``--out DIR``, ``--set KEY=VALUE`` (override a config field), ``--resume``
(continue the ``outputs.zarr`` of an interrupted run with the same configuration), ``--scheduler``
(``threads``, ``processes``, ``synchronous`` or the address of a Dask scheduler, e.g. one started
by dask-jobqueue or dask-gateway), ``--device`` (``cpu`` or ``gpu``), ``--quiet`` (no progress
bars). Progress (training epochs, Dask computations) goes to stderr, results to stdout. Every run
writes its configuration as ``config.toml`` in its output folder, loadable with ``--config``.
Mistakes are reported as one line, ``error: <message>``, on stderr with exit code 2.

``xfusion demo`` writes each recipe into its own folder, ``OUT/<recipe>`` (``OUT`` is
``xfusion-out`` unless ``--out`` is given), so recipes never meet each other's outputs, and
running the same demo again reuses its folder (replacing its outputs).

Output folders: a folder that does not exist or is empty is created and marked with
``.xfusion-output.json``; a folder holding that marker (an earlier output) is reused; any other
non-empty folder is refused and nothing is written into it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask
import pandas as pd
import xarray as xr

from xfusion._files import claim_output_dir
from xfusion.errors import ConfigError, SourceError, XFusionError

__all__ = ["main"]

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


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        help="output folder (default: the config's out_dir); it must be new, empty or an "
        "earlier xfusion output (marked by .xfusion-output.json)",
    )
    parser.add_argument(
        "--resume", action="store_true", default=None,
        help="continue the outputs.zarr.partial left by an interrupted run with the same "
        "configuration instead of starting over (a different configuration is an error)",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field (repeatable); VALUE is read as TOML, e.g. --set epochs=5",
    )  # fmt: skip
    parser.add_argument(
        "--scheduler", default=None,
        help="Dask scheduler: threads (default), processes, synchronous, or a scheduler address "
        "such as tcp://10.0.0.1:8786",
    )  # fmt: skip
    parser.add_argument(
        "--device", choices=("cpu", "gpu"), default=None,
        help="where JAX runs the models (default: a GPU if JAX sees one, else the CPU)",
    )  # fmt: skip
    parser.add_argument(
        "-q", "--quiet", action="store_true",
        help="no progress bars (by default training epochs and Dask computations longer than a "
        "second show one on stderr)",
    )  # fmt: skip


_RUN_EPILOG = textwrap.fill(
    "Outputs: OUT/outputs.zarr is written as OUT/outputs.zarr.partial, region by region, and "
    "renamed once complete, so outputs.zarr is never half-written. After an interruption, run "
    "the same command with --resume (or resume = true in FILE) to continue it; the result is "
    "identical to an uninterrupted run. Without --resume a partial store is discarded. "
    "metrics.json and the figures are written after the store; config.toml holds the "
    "configuration of the run (give it to --config to run it again). OUT must be new, empty or "
    "an earlier xfusion output (it holds .xfusion-output.json); a folder of other files is "
    "refused, as are links inside OUT leading outside it.",
    width=88,
)


def _config_help(recipe: str | None) -> str:
    """Return the config keys of ``recipe`` for ``xfusion run RECIPE --help`` ('' if none)."""
    from xfusion import recipes
    from xfusion.recipes._base import config_keys, toml_value

    if recipe not in recipes.RECIPES:
        return ""
    keys = config_keys(recipes.get(recipe).Config)
    lines = [
        f"config keys of {recipe!r} (KEY = VALUE in the --config file, or --set KEY=VALUE; "
        "values in TOML):",
    ]
    width = max(len(name) for name, *_ in keys)
    for name, kind, default, doc in keys:
        shown = "unset" if default is None else toml_value(default)
        lines.append(f"  {name:<{width}}  {kind}, default {shown}")
        if doc:
            lines.extend(
                textwrap.wrap(doc, width=88, initial_indent=" " * 6, subsequent_indent=" " * 6)
            )
    return "\n".join(lines) + "\n\n"


def build_parser(recipe: str | None = None) -> argparse.ArgumentParser:
    """Return the argument parser of the ``xfusion`` command.

    With ``recipe`` (a recipe name), the help of ``xfusion run`` lists that recipe's config keys.
    """
    from xfusion.datasets.synthetic import SCENES
    from xfusion.recipes import RECIPES

    parser = argparse.ArgumentParser(
        prog="xfusion",
        description="Lazy, Dask-native satellite data fusion and machine learning on datacubes.",
        epilog="Run 'xfusion COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the main job (the nightlights recipe) on the embedded synthetic scene",
        description="Run a recipe (default: nightlights) offline on its synthetic scene, written "
        "as a local STAC catalog and read back through xfusion.open_stac; print a summary table "
        "and where the outputs are. --all runs every recipe. Each recipe writes into its own "
        "folder, OUT/<recipe> (OUT: --out, default xfusion-out); running a demo again reuses "
        "its folder.",
    )
    demo.add_argument(
        "recipe", nargs="?", default="nightlights", choices=RECIPES,
        help="which recipe (default: nightlights)",
    )  # fmt: skip
    demo.add_argument("--all", action="store_true", help="run every recipe")
    _add_common(demo)
    demo.set_defaults(out="xfusion-out")
    demo.set_defaults(func=_demo)

    run = sub.add_parser(
        "run",
        help="run a recipe with a TOML configuration",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Run RECIPE with the configuration in FILE (TOML: the config fields as top-level "
            "keys or under a [RECIPE] table). Fields not given keep their defaults. 'xfusion run "
            "RECIPE --help' lists RECIPE's config keys.",
            width=88,
        ),
        epilog=_config_help(recipe) + _RUN_EPILOG,
    )
    run.add_argument("recipe", help=f"one of {', '.join(RECIPES)}")
    run.add_argument("--config", help="TOML configuration file")
    _add_common(run)
    run.set_defaults(func=_run)

    recipes = sub.add_parser("recipes", help="list the recipes", description="List the recipes.")
    recipes.set_defaults(func=_recipes)

    scene = sub.add_parser(
        "scene",
        help="write a synthetic scene as a STAC catalog, open it, summarise it, draw a quicklook",
        description="Write the synthetic scene of RECIPE as COGs and a STAC catalog in OUT/stac, "
        "open it with xfusion.open_stac, print a summary of every source and write a quicklook.",
    )
    scene.add_argument(
        "recipe", nargs="?", default="nightlights", choices=sorted(SCENES),
        help="which synthetic scene, named after its recipe (default: nightlights)",
    )  # fmt: skip
    scene.add_argument(
        "--out", default="xfusion-scene", help="output folder (default: %(default)s)"
    )
    scene.add_argument("--seed", type=_positive_int, default=0, help="random seed (default: 0)")
    scene.add_argument(
        "--size", type=_positive_int, default=256,
        help="pixels along each side of the finest grid (default: 256, at least 16)",
    )  # fmt: skip
    scene.set_defaults(func=_scene)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xfusion`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Examples
    --------
    >>> main(["recipes"])  # doctest: +ELLIPSIS
    builtup      Built-up area mapping ...
    ...
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # `xfusion run RECIPE --help` lists RECIPE's config keys
    recipe = argv[1] if len(argv) > 1 and argv[0] == "run" else None
    parser = build_parser(recipe)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args)
    except XFusionError as err:
        message = " ".join(str(err).split())  # one line, however the message was wrapped
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.command in ("run", "demo")
        hint = " (run the same command with --resume to continue)" if resumable else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["epochs=5", "source=ee"]`` → ``{"epochs": 5, "source": "ee"}`` (values read as TOML).

    The ``--set KEY=VALUE`` grammar of ``xfusion run``; a bare word is a string.
    """
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE; got {item!r}")
        try:
            values[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = text  # a bare word is a string
    return values


def _load_config(recipe: str, path: str | None, args: argparse.Namespace) -> Any:
    from xfusion import recipes
    from xfusion.recipes._base import read_toml

    module = recipes.get(recipe)
    # only the keys given (file, --set, --out) go to from_dict, so that it can tell which keys
    # a change of source leaves at defaults meant for another source
    values = read_toml(path) if path else {}
    values.update(parse_overrides(args.overrides))
    if args.command == "demo":
        values["out_dir"] = str(Path(args.out) / recipe)
    elif args.out is not None:
        values["out_dir"] = args.out
    if args.resume:
        values["resume"] = True
    return module, module.Config.from_dict(values)


@contextlib.contextmanager
def _execution(args: argparse.Namespace) -> Iterator[None]:
    """Select the JAX device, the Dask scheduler and the progress bars for a run."""
    from xfusion.recipes._base import progress

    with progress(not args.quiet), _scheduler(args):
        yield


@contextlib.contextmanager
def _scheduler(args: argparse.Namespace) -> Iterator[None]:
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    elif args.device == "gpu":
        os.environ["JAX_PLATFORMS"] = "cuda"
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    scheduler = args.scheduler
    if scheduler is None or scheduler in ("threads", "processes", "synchronous", "sync"):
        with dask.config.set(scheduler=scheduler or "threads"):
            yield
        return
    try:
        from distributed import Client

        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as err:
        raise SourceError(
            f"cannot connect to the Dask scheduler at {scheduler!r} ({err}); expected an address "
            "like tcp://host:8786, or one of threads/processes/synchronous"
        ) from err
    with client:
        print(f"Dask cluster: {client.dashboard_link}")
        yield


def _run_one(recipe: str, config_path: str | None, args: argparse.Namespace) -> Any:
    module, config = _load_config(recipe, config_path, args)
    print(f"running {recipe!r} -> {config.out_dir}", flush=True)
    started = time.perf_counter()
    result = module.run(config)
    elapsed = time.perf_counter() - started
    print(result.summary())
    for name, path in {**result.files, **result.figures}.items():
        print(f"  {name:<24} {path}")
    print(f"{recipe} finished in {elapsed:.0f} s", flush=True)
    return result


def _demo(args: argparse.Namespace) -> int:
    from xfusion.recipes import RECIPES

    names = list(RECIPES) if args.all else [args.recipe]
    for name in names:  # every configuration mistake before any run
        _load_config(name, None, args)
    # OUT holds one folder per recipe; claiming it first refuses a folder of someone else's files
    claim_output_dir(
        args.out, owner="demo", message="output directory {path} is not writable: {reason}"
    )
    with _execution(args):
        results = [_run_one(name, None, args) for name in names]
    if len(results) > 1:
        print()
        print("all recipes finished:")
        for res in results:
            print(f"  {res.recipe:<12} {res.out_dir}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from xfusion import recipes

    recipes.get(args.recipe)  # unknown recipe -> ConfigError before any work
    with _execution(args):
        _run_one(args.recipe, args.config, args)
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from xfusion import recipes

    width = max(map(len, recipes.RECIPES))
    for name in recipes.RECIPES:
        print(f"{name:<{width}}  {recipes.summary(name)}")
    return 0


def _prepare_out(out: Path) -> Path:
    return claim_output_dir(
        out,
        owner="scene",
        message="cannot write to output folder {path} ({reason}); "
        "expected a writable folder, e.g. --out ./xfusion-demo",
    )


def _scene(args: argparse.Namespace) -> int:
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
