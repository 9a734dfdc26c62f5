"""The recipes: every public module of this package is one, found here by its file.

========================  ==================================================================
``builtup``               Sentinel-2 + VIIRS fused at 1 km, GHSL labels, built-up maps per year
``cloudmask``             multitemporal cloud masking: lags, ridge forecasts, k-means
``downscale``             coarse field downscaled with fine auxiliary data, coarse supervision
``nightlights``           night-light radiance at 30 m from Landsat with a regression U-Net
``water``                 SAR + optical + terrain surface-water segmentation U-Net
========================  ==================================================================

This is the one registry of recipes: :data:`RECIPES` (their names, from the files
``xfusion/recipes/<name>.py`` not starting with ``_``), :func:`get` (the module) and
:func:`summary` (the first line of its docstring, read without importing it). The command line
(``xfusion recipes``, ``demo``, ``run``), the notebooks' and the README's tests use it, so a new
recipe is a new file here (with its test and its notebook) and nothing else. Modules are
imported on first use (``xf.recipes.nightlights``), so ``import xfusion`` stays light.

A recipe module holds a ``Config`` dataclass built from the field groups of
:mod:`xfusion.recipes._config` and ``run(config) -> RecipeResult``, which writes its outputs
with :func:`xfusion.recipes._outputs.write_results`: every recipe writes into
``config.out_dir``, which must be new, empty or an earlier xfusion output (marked by
``.xfusion-output.json``); a folder of other files is refused before anything is written.
``outputs.zarr`` only ever appears complete; after an interruption, the same run with
``resume=True`` (``xfusion run RECIPE --resume``) continues it and gives the same bytes as an
uninterrupted run. Every run writes its configuration to ``config.toml`` in ``out_dir``
(loadable with ``Config.from_toml`` or ``xfusion run RECIPE --config``) and its metrics, with
the comparison against baselines, to ``metrics.json``. The details are in
:mod:`xfusion.recipes._base`; :func:`xfusion.recipes._base.progress` shows progress bars.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path
from types import ModuleType


def _discover() -> tuple[str, ...]:
    """Names of the recipe modules of this package (public modules), sorted."""
    here = [str(Path(__file__).parent)]
    return tuple(sorted(m.name for m in pkgutil.iter_modules(here) if not m.name.startswith("_")))


#: The recipe names, sorted: the modules ``xfusion/recipes/<name>.py``.
RECIPES: tuple[str, ...] = _discover()

__all__ = ["RECIPES", "get", "summary", *RECIPES]


def _check(name: str) -> None:
    from xfusion.errors import ConfigError

    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; available recipes are {list(RECIPES)}")


def get(name: str) -> ModuleType:
    """Return the recipe module ``name`` (:class:`~xfusion.errors.ConfigError` if unknown).

    Examples
    --------
    >>> get("downscale").Config().out_dir
    'xfusion-out/downscale'
    """
    _check(name)
    return importlib.import_module(f"{__name__}.{name}")


def summary(name: str) -> str:
    """Return what recipe ``name`` does in one line: the first line of its module docstring.

    The docstring is read from the source file, so listing the recipes imports none of them.

    Examples
    --------
    >>> summary("water")
    'Surface-water segmentation from SAR, optical and terrain layers with a U-Net.'
    """
    _check(name)
    spec = importlib.util.find_spec(f"{__name__}.{name}")
    source = Path(spec.origin).read_text(encoding="utf-8")  # type: ignore[union-attr, arg-type]
    doc = ast.get_docstring(ast.parse(source)) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def __getattr__(name: str) -> ModuleType:
    if name in RECIPES:
        return get(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
