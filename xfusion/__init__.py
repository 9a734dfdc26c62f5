"""xfusion: lazy, Dask-native satellite data fusion and machine learning on xarray datacubes.

>>> import xfusion as xf
>>> g = xf.grid((0, 0, 100, 100), "EPSG:32633", 10)
>>> g.shape
Shape2d(x=10, y=10)
"""

from __future__ import annotations

from xfusion import accessor, bands, datasets, errors, grids, models, recipes, viz
from xfusion.grids import grid
from xfusion.io.raster import open_raster
from xfusion.io.stac import open_stac
from xfusion.io.store import open_zarr, store_is_complete, write_zarr
from xfusion.preprocess.composite import composite
from xfusion.preprocess.features import index, standardize
from xfusion.preprocess.fuse import fuse
from xfusion.preprocess.lags import lags
from xfusion.preprocess.mask import (
    CLASS_PRESETS,
    QA_PRESETS,
    SCALE_PRESETS,
    dilate,
    mask_bits,
    mask_classes,
    mask_range,
    scale,
)
from xfusion.preprocess.resample import resample
from xfusion.preprocess.sample import class_balance, dihedral, patches, sample
from xfusion.preprocess.texture import lbp

# ``xf.grid`` is the function; its adapters hang off it so ``xf.grid.to_xee(g)`` reads naturally.
grid.to_xee = grids.to_xee  # type: ignore[attr-defined]
grid.to_stackstac = grids.to_stackstac  # type: ignore[attr-defined]


def __getattr__(name: str):
    # ``open_ee`` pulls in the Earth Engine client and xee, heavy imports; load them
    # on first use so that Dask workers and STAC-only users do not pay for it.
    if name == "open_ee":
        from xfusion.io.ee import open_ee

        return open_ee
    raise AttributeError(f"module 'xfusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"open_ee"})


def load_model(path):
    """Load a model saved with ``model.save(path)``: :func:`xfusion.models.persist.load_model`."""
    from xfusion.models.persist import load_model as _load_model

    return _load_model(path)


__version__ = "0.1.0"
__all__ = [
    "CLASS_PRESETS",
    "QA_PRESETS",
    "SCALE_PRESETS",
    "__version__",
    "accessor",
    "bands",
    "class_balance",
    "composite",
    "datasets",
    "dihedral",
    "dilate",
    "errors",
    "fuse",
    "grid",
    "grids",
    "index",
    "lags",
    "lbp",
    "load_model",
    "mask_bits",
    "mask_classes",
    "mask_range",
    "models",
    "open_ee",
    "open_raster",
    "open_stac",
    "open_zarr",
    "patches",
    "recipes",
    "resample",
    "sample",
    "scale",
    "standardize",
    "store_is_complete",
    "viz",
    "write_zarr",
]
