"""Models: the Flax U-Net and its estimators, ridge models, blockwise prediction, persistence.

Names are imported on first use, so ``import xfusion`` does not pay for importing JAX and Flax.

>>> from xfusion import models
>>> models.UNetRegressor(epochs=3).epochs
3
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "KernelRidge",
    "Ridge",
    "UNet",
    "UNetRegressor",
    "UNetSegmenter",
    "baselines",
    "cross_validate",
    "fit_baselines",
    "load_model",
    "model_bands",
    "score_baselines",
    "set_bands",
    "spatial_folds",
    "validate_sidecar",
]

_LAZY = {
    "UNet": "xfusion.models.unet",
    "UNetRegressor": "xfusion.models.estimators",
    "UNetSegmenter": "xfusion.models.estimators",
    "Ridge": "xfusion.models.ridge",
    "KernelRidge": "xfusion.models.ridge",
    "load_model": "xfusion.models.persist",
    "model_bands": "xfusion.models.predict",
    "set_bands": "xfusion.models.predict",
    "validate_sidecar": "xfusion.models.persist",
    "cross_validate": "xfusion.models.validation",
    "spatial_folds": "xfusion.models.validation",
    "fit_baselines": "xfusion.models.baselines",
    "score_baselines": "xfusion.models.baselines",
}


def __getattr__(name: str) -> Any:
    if name == "baselines":  # the module (compare, ThresholdClassifier, ...)
        return importlib.import_module("xfusion.models.baselines")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
