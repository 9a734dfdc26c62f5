"""The five workflows, each a module with a ``Config`` dataclass and ``run(config)``.

========================  ==================================================================
``builtup``               Sentinel-2 + VIIRS fused at 1 km, GHSL labels, built-up maps per year
``nightlights``           night-light radiance at 30 m from Landsat with a regression U-Net
``cloudmask``             multitemporal cloud masking: lags, ridge forecasts, k-means
``water``                 SAR + optical + terrain surface-water segmentation U-Net
``downscale``             coarse field downscaled with fine auxiliary data, coarse supervision
========================  ==================================================================

Modules are imported on first use (``xf.recipes.nightlights``), so ``import xfusion`` stays light.

Every recipe writes into ``config.out_dir``, which must be new, empty or an earlier xfusion output
(marked by ``.xfusion-output.json``); a folder of other files is refused before anything is
written. ``outputs.zarr`` only ever appears complete; after an interruption, the same run with
``resume=True`` (``xfusion run RECIPE --resume``) continues it and gives the same bytes as an
uninterrupted run. Every run writes its configuration to ``config.toml`` in ``out_dir``
(loadable with ``Config.from_toml`` or ``xfusion run RECIPE --config``). The details are in
:mod:`xfusion.recipes._base`; :func:`xfusion.recipes._base.progress` shows progress bars.
"""

from __future__ import annotations

import importlib
from types import ModuleType

RECIPES = ("builtup", "nightlights", "cloudmask", "water", "downscale")

__all__ = ["RECIPES", "get", *RECIPES]


def get(name: str) -> ModuleType:
    """Return the recipe module ``name`` (:class:`~xfusion.errors.ConfigError` if unknown)."""
    from xfusion.errors import ConfigError

    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; available recipes are {list(RECIPES)}")
    return importlib.import_module(f"xfusion.recipes.{name}")


def __getattr__(name: str) -> ModuleType:
    if name in RECIPES:
        return get(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
