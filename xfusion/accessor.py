"""The ``.xf`` accessor on DataArray and Dataset.

Every method is a one-line delegation to a pure function of the same name (documented there);
the accessor holds no state, because xarray re-creates it for every new object.
``cube.xf.f(*args)`` is exactly ``f(cube, *args)``; ``tests/test_accessor.py`` checks it.
"""

from __future__ import annotations

import re
from typing import Any

import xarray as xr

from xfusion import viz
from xfusion.models import predict as _predict
from xfusion.preprocess import (
    composite as _composite,
)
from xfusion.preprocess import (
    features as _features,
)
from xfusion.preprocess import (
    lags as _lags,
)
from xfusion.preprocess import (
    mask as _mask,
)
from xfusion.preprocess import (
    resample as _resample,
)
from xfusion.preprocess import (
    sample as _sample,
)
from xfusion.preprocess import (
    texture as _texture,
)

__all__ = ["XFusionAccessor"]


class _Base:
    def __init__(self, obj: Any) -> None:
        self._obj = obj


@xr.register_dataarray_accessor("xf")
class XFusionAccessor(_Base):
    """``da.xf``: masks, composites, resampling, features, sampling, prediction and plots."""

    def mask_bits(self, qa, bits, *, drop=True, missing=None):  # noqa: D102
        return _mask.mask_bits(self._obj, qa, bits, drop=drop, missing=missing)

    def mask_classes(self, qa, classes, *, drop=True, missing=None):  # noqa: D102
        return _mask.mask_classes(self._obj, qa, classes, drop=drop, missing=missing)

    def mask_range(self, lo, hi, **kwargs):  # noqa: D102
        return _mask.mask_range(self._obj, lo, hi, **kwargs)

    def scale(self, factor, offset=0.0, *, again=False):  # noqa: D102
        return _mask.scale(self._obj, factor, offset, again=again)

    def dilate(self, radius):  # noqa: D102
        return _mask.dilate(self._obj, radius)

    def composite(self, how="median", *, freq=None, start=None, end=None):  # noqa: D102
        return _composite.composite(self._obj, how, freq=freq, start=start, end=end)

    def standardize(self, mean=None, std=None):  # noqa: D102
        return _features.standardize(self._obj, mean, std)

    def index(self, name):  # noqa: D102
        return _features.index(self._obj, name)

    def resample(self, grid_or_like, resampling=None, **kwargs):  # noqa: D102
        return _resample.resample(self._obj, grid_or_like, resampling, **kwargs)

    def lags(self, n, *, cloud_score=None, **kwargs):  # noqa: D102
        return _lags.lags(self._obj, n, cloud_score=cloud_score, **kwargs)

    def lbp(self, points=8, radius=1):  # noqa: D102
        return _texture.lbp(self._obj, points, radius)

    def sample(self, labels, n, *, seed=0, stratify=False):  # noqa: D102
        return _sample.sample(self._obj, labels, n, seed=seed, stratify=stratify)

    def patches(self, target=None, *, size, n, seed=0, regions=None, **kwargs):  # noqa: D102
        return _sample.patches(
            self._obj, target, size=size, n=n, seed=seed, regions=regions, **kwargs
        )

    def predict(self, model, *, halo=None, tile=None, batch_size=None, **kwargs):  # noqa: D102
        return _predict.predict(
            self._obj, model, halo=halo, tile=tile, batch_size=batch_size, **kwargs
        )

    def plot_rgb(self, bands=None, **kwargs):  # noqa: D102
        return viz.plot_rgb(self._obj, bands, **kwargs)

    def explore(self, **kwargs):  # noqa: D102
        return viz.explore(self._obj, **kwargs)

    def plot_bands(self, bands=None, **kwargs):  # noqa: D102
        return viz.plot_bands(self._obj, bands, **kwargs)

    def plot_classes(self, classes=None, **kwargs):  # noqa: D102
        return viz.plot_classes(self._obj, classes, **kwargs)


@xr.register_dataset_accessor("xf")
class XFusionDatasetAccessor(_Base):
    """``ds.xf``: the operations that make sense variable by variable on a Dataset."""

    def mask_range(self, lo, hi, **kwargs):
        return _mask.mask_range(self._obj, lo, hi, **kwargs)

    def scale(self, factor, offset=0.0, *, again=False):
        return _mask.scale(self._obj, factor, offset, again=again)

    def composite(self, how="median", *, freq=None, start=None, end=None):
        return _composite.composite(self._obj, how, freq=freq, start=start, end=end)

    def resample(self, grid_or_like, resampling=None, **kwargs):
        return _resample.resample(self._obj, grid_or_like, resampling, **kwargs)


def _share_docstrings() -> None:
    # The accessor's methods document themselves with their function's docstring, so that
    # ``cube.xf.composite?`` in Jupyter shows the real documentation.
    modules = (_mask, _composite, _features, _resample, _lags, _texture, _sample, _predict, viz)
    for cls in (XFusionAccessor, XFusionDatasetAccessor):
        for name, method in vars(cls).items():
            if name.startswith("_") or not callable(method):
                continue
            for module in modules:
                target = getattr(module, name, None)
                if callable(target) and target.__doc__:
                    # the function's doctests stay with the function (they run there)
                    doc = re.split(r"\n\s*Examples\n\s*-{8}", target.__doc__)[0].rstrip()
                    method.__doc__ = f"{doc}\n\n    See :func:`{module.__name__}.{name}`.\n"
                    break


_share_docstrings()
