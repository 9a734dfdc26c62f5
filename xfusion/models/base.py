"""What a model is to xfusion: the protocols predict and persistence rely on, and a base class.

The protocols say what :func:`xfusion.predict` and :mod:`xfusion.models.persist` use of a
model; :class:`Estimator` is the base of xfusion's own estimators.

:func:`xfusion.predict` applies two kinds of models, told apart by what they have, never by
their class (a scikit-learn estimator fitted by the user works as well as xfusion's own):

- a :class:`PixelModel` maps rows of band values to outputs, pixel by pixel (xfusion's
  ``Ridge``, ``KernelRidge`` and ``KMeans``, any fitted scikit-learn estimator);
- a :class:`SpatialModel` maps image tiles to image tiles and is applied blockwise with a halo
  (xfusion's ``UNetRegressor`` and ``UNetSegmenter``).

A model that :func:`xfusion.models.load_model` can rebuild is a :class:`SaveableModel`. All
three are :func:`typing.runtime_checkable`, so ``isinstance(model, PixelModel)`` checks that
the methods exist (not their signatures).

:class:`Estimator` follows scikit-learn's ``BaseEstimator`` conventions without importing
scikit-learn: no logic in ``__init__``, every constructor argument stored under its own name,
:meth:`~Estimator.get_params` read from the ``__init__`` signature, :meth:`~Estimator.set_params`,
a ``repr`` of the parameters, and fitted attributes ending in ``_``, so :func:`clone` (and
:func:`sklearn.base.clone`) gives an unfitted copy with the same parameters. A new model is one
file: a class deriving from :class:`Estimator` with ``fit``, ``predict`` (or
``inference_state``), ``save`` and ``_from_saved``, plus its line in
:data:`xfusion.models.persist.MODEL_CLASSES`.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from xfusion.errors import InputError, ModelError

__all__ = ["Estimator", "PixelModel", "SaveableModel", "SpatialModel", "clone"]


@runtime_checkable
class PixelModel(Protocol):
    """A fitted model that :func:`xfusion.predict` applies pixel by pixel.

    Required: ``predict(rows)`` taking a ``(samples, bands)`` array (or a DataFrame whose
    columns are the bands) and returning ``(samples,)`` or ``(samples, outputs)``.

    Read when present: ``bands_`` or scikit-learn's ``feature_names_in_`` (the band names, in
    input order), ``n_features_in_``, ``output_bands_``, ``classes_`` and ``predict_proba``
    (classifiers), ``cluster_centers_`` (clusterers), ``n_outputs_``/``coef_`` (the number of
    outputs) and ``_check_fitted()`` (raises :class:`~xfusion.errors.ModelError` when not
    fitted).
    """

    def predict(self, X: Any) -> Any:
        """Predict rows of features."""
        ...


@runtime_checkable
class SpatialModel(Protocol):
    """A fitted model that :func:`xfusion.predict` applies to image tiles, blockwise.

    Required: ``inference_state()`` returning ``(config, params)`` (or a mapping with those
    keys): what the model's ``apply_tiles(config, params, tiles)`` function (a method, a
    function of the model's module, or :func:`xfusion.models.unet.apply_tiles`) needs to map
    ``(n, bands, h, w)`` tiles to ``(n, outputs, h, w)``.

    Read when present: ``bands_`` (input band names), ``output_bands_`` (default
    ``["prediction"]``), ``tile_multiple_`` (tiles and halo are multiples of it; default 1),
    ``default_halo_`` (default 0) and ``_check_fitted()``.
    """

    def inference_state(self) -> Any:
        """Return ``(config, params)`` for ``apply_tiles``."""
        ...


@runtime_checkable
class SaveableModel(Protocol):
    """A model :func:`xfusion.models.persist.write_model` saves and ``load_model`` rebuilds.

    Required: ``get_params()`` (constructor parameters, stored in the sidecar), ``save(path)``
    (writes the folder through ``write_model``) and the class method
    ``_from_saved(meta, state)`` (rebuilds the fitted model from the checked sidecar and
    weights). ``bands_`` and ``output_bands_`` are stored when present. The class must also be
    listed in :data:`xfusion.models.persist.MODEL_CLASSES`.
    """

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Return the constructor parameters."""
        ...

    def save(self, path: str | os.PathLike[str]) -> Any:
        """Write the fitted model to ``path``."""
        ...

    @classmethod
    def _from_saved(cls, meta: Mapping[str, Any], state: Mapping[str, Any]) -> Any: ...


class Estimator:
    """Base of xfusion's estimators: scikit-learn's ``BaseEstimator`` conventions.

    A subclass's ``__init__`` takes its parameters as named arguments (no ``*args``) and stores
    each, unchanged, under its own name; checks belong in ``fit``. Fitted attributes end in
    ``_`` and are set by ``fit`` only.

    Examples
    --------
    >>> class Scale(Estimator):
    ...     def __init__(self, factor=1.0, *, offset=0.0):
    ...         self.factor = factor
    ...         self.offset = offset
    >>> model = Scale(2.0)
    >>> model.get_params()
    {'factor': 2.0, 'offset': 0.0}
    >>> model.set_params(offset=1.0)
    Scale(factor=2.0, offset=1.0)
    >>> model.set_params(shift=1)
    Traceback (most recent call last):
    ...
    xfusion.errors.InputError: unknown parameter 'shift' of Scale; parameters are [...]
    """

    @classmethod
    def _get_param_names(cls) -> list[str]:
        """Return the constructor's parameter names, in signature order (scikit-learn's rule)."""
        init = cls.__init__
        if init is object.__init__:
            return []
        names = []
        for p in inspect.signature(init).parameters.values():
            if p.name == "self":
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(
                    f"{cls.__name__}.__init__ takes {p}; an estimator's parameters are named "
                    "arguments (scikit-learn convention)"
                )
            names.append(p.name)
        return names

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Return the constructor parameters by name (scikit-learn convention).

        ``deep`` is accepted for scikit-learn compatibility; xfusion's estimators hold no
        nested estimators.
        """
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> Estimator:
        """Set constructor parameters; returns ``self``.

        Raises
        ------
        InputError
            A name that is not a constructor parameter.
        """
        names = self._get_param_names()
        for name, value in params.items():
            if name not in names:
                raise InputError(
                    f"unknown parameter {name!r} of {type(self).__name__}; parameters are {names}"
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _fitted_attributes(self) -> list[str]:
        return [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]

    def _check_fitted(self) -> None:
        """Raise :class:`~xfusion.errors.ModelError` unless ``fit`` has run."""
        if not self._fitted_attributes():
            raise ModelError(f"this {type(self).__name__} is not fitted yet; call fit first")


def clone(model: Any) -> Any:
    """Return an unfitted copy of ``model`` with the same parameters (scikit-learn's ``clone``).

    Works for any object with ``get_params`` whose class takes those parameters back
    (xfusion's estimators, scikit-learn's); the parameters are deep-copied, nothing fitted is
    kept.

    Examples
    --------
    >>> import numpy as np
    >>> from xfusion.models import Ridge
    >>> fitted = Ridge(alpha=0.5).fit(np.eye(3), [0.0, 1.0, 2.0])
    >>> copy_ = clone(fitted)
    >>> copy_, hasattr(copy_, "coef_")
    (Ridge(alpha=0.5, fit_intercept=True), False)
    """
    if not callable(getattr(model, "get_params", None)) or isinstance(model, type):
        raise InputError(
            f"clone needs an estimator instance with get_params(); got {type(model).__name__}"
        )
    params = model.get_params(deep=False)
    return type(model)(**{k: copy.deepcopy(v) for k, v in params.items()})
