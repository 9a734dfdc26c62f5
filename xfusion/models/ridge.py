"""Ridge and RBF kernel ridge regression, fitted in one pass over Dask-backed cubes and tables.

:class:`Ridge` reduces every block of rows to weighted, centred sufficient statistics
(``Σw``, means, ``XᵀWX`` and ``XᵀWy`` about the means) with one ``blockwise`` call, merges them
and solves the closed-form ridge system: the design matrix is never materialised and every chunk
is read once. :class:`KernelRidge` approximates the RBF kernel with Nyström landmarks or random
Fourier features (the same one-pass ridge on the features) or solves it exactly for small ``n``,
in JAX.

Fitting computes (it is the documented exception to laziness); prediction on a cube is lazy
(through :func:`xfusion.models.predict.predict`), on a numpy array eager.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr
from threadpoolctl import threadpool_limits

from xfusion._kernels import ridge as _rk
from xfusion.errors import BandError, GridError, InputError, ModelError
from xfusion.grids import snap_to_grid
from xfusion.models.base import Estimator
from xfusion.models.predict import predict as _predict_cube

__all__ = ["KernelRidge", "Ridge"]

_SPATIAL = ("band", "y", "x")


# ----------------------------------------------------------------------------------------------
# Inputs: numpy / pandas / dask tables and cubes, reduced block by block to sufficient statistics
# ----------------------------------------------------------------------------------------------


def _names(values) -> list[str]:
    return [str(v) for v in values]


def _column_names(frame: pd.DataFrame) -> list[str] | None:
    """Band names of a DataFrame's columns; None unless all are strings (as scikit-learn).

    ``pd.DataFrame(X)`` numbers its columns 0, 1, …: positions, not band names.
    """
    cols = list(frame.columns)
    return [str(c) for c in cols] if all(isinstance(c, str) for c in cols) else None


def _output_names(k: int) -> list[str]:
    return ["prediction"] if k == 1 else [f"prediction_{i}" for i in range(k)]


def _table_stats(X, y, w, transform, p_out: int | None):
    """Statistics of a numpy/pandas/dask table; returns (stats graph or array, p, k, info)."""
    info: dict[str, Any] = {"bands": None, "output_bands": None}
    if isinstance(X, pd.DataFrame):
        info["bands"] = _column_names(X)
        X = X.to_numpy(dtype=np.float64)
    if isinstance(y, pd.DataFrame):
        info["output_bands"] = _names(y.columns)
        y = y.to_numpy(dtype=np.float64)
    elif isinstance(y, pd.Series):
        y = y.to_numpy(dtype=np.float64)
    if isinstance(w, pd.Series):
        w = w.to_numpy(dtype=np.float64)
    lazy = any(isinstance(a, dsa.Array) for a in (X, y, w))
    if not lazy:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        w = None if w is None else np.asarray(w, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"X must be 2-D (samples, features); got shape {X.shape}")
    info["y_1d"] = y.ndim == 1
    if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
        raise InputError(f"y must have {X.shape[0]} rows like X; got shape {y.shape}")
    if w is not None and (w.ndim != 1 or w.shape[0] != X.shape[0]):
        raise InputError(f"sample_weight must be 1-D with {X.shape[0]} values; got shape {w.shape}")
    p = X.shape[1]
    k = 1 if y.ndim == 1 else y.shape[1]
    p_stats = p if p_out is None else p_out
    if not lazy:
        return _rk.block_stats(X, y, w, transform), p, p_stats, k, info
    X = dsa.asarray(X).rechunk({1: -1})
    rows = X.chunks[0]
    y = dsa.asarray(y)
    y = y.rechunk((rows,) if y.ndim == 1 else (rows, -1))
    args = [X, "ij", y, "i" if y.ndim == 1 else "ik"]
    if w is not None:
        args += [dsa.asarray(w).rechunk((rows,)), "i"]
    size = _rk.stats_size(p_stats, k)
    stats = dsa.blockwise(
        partial(_block_table, transform=transform, has_w=w is not None),
        "iS",
        *args,
        new_axes={"S": size},
        adjust_chunks={"i": 1},
        dtype=np.float64,
        concatenate=True,
        meta=np.empty((0, 0), np.float64),
    )
    return stats, p, p_stats, k, info


def _block_table(X, y, w=None, *, transform, has_w):
    return _rk.block_stats(X, y, w if has_w else None, transform)[None, :]


def _on_xy(da: xr.DataArray) -> bool:
    return all(d in da.coords and d in da.dims for d in ("y", "x"))


def _cube_stats(X: xr.DataArray, y, w, transform, p_out: int | None):
    """Statistics of a cube ``(…, band, y, x)`` against targets on the same grid."""
    missing = [d for d in _SPATIAL if d not in X.dims]
    if missing:
        raise InputError(f"a cube needs dims {_SPATIAL} (time optional); {X.dims} lacks {missing}")
    if not isinstance(y, xr.DataArray):
        raise InputError(
            f"with a cube X, y must be a DataArray on the same grid; got {type(y).__name__}"
        )
    lead = [d for d in X.dims if d not in _SPATIAL]
    Xt = X.transpose(*lead, *_SPATIAL)
    template = Xt.isel(band=0, drop=True)
    info: dict[str, Any] = {"bands": _names(X.band.values), "y_1d": "band" not in y.dims}
    info["output_bands"] = None if info["y_1d"] else _names(y.band.values)
    yt = y if "band" in y.dims else y.expand_dims("band")
    yt = yt.rename(band="target")
    extra = [d for d in yt.dims if d not in (*lead, "target", "y", "x")]
    if extra:
        raise InputError(f"y has dims {extra} that the cube {X.dims} does not have")
    parts = [yt] + ([] if w is None else [w])
    if w is not None:
        if not isinstance(w, xr.DataArray) or "band" in w.dims:
            raise InputError(
                "with a cube X, sample_weight must be a DataArray on its grid without 'band'"
            )
    if _on_xy(template):  # the one same-grid rule, coordinates snapped to the cube's
        parts = [snap_to_grid(p, template, "y/sample_weight") if _on_xy(p) else p for p in parts]
    try:
        aligned = xr.align(template, *parts, join="exact")
    except ValueError as err:
        raise GridError(f"y/sample_weight are not on the cube's grid: {err}") from err
    yt = aligned[1].broadcast_like(template).transpose(*lead, "target", "y", "x")
    wt = None if w is None else aligned[2].broadcast_like(template).transpose(*lead, "y", "x")
    arrays = [Xt, yt] + ([] if wt is None else [wt])
    p, k = Xt.sizes["band"], yt.sizes["target"]
    p_stats = p if p_out is None else p_out
    reference = next((a for a in arrays if a.chunks is not None), None)
    if reference is None:
        stats = _block_cube(Xt.data, yt.data, None if wt is None else wt.data, transform=transform)
        return stats, p, p_stats, k, info
    chunks = {
        d: c for d, c in zip(reference.dims, reference.chunks, strict=True) if d in template.dims
    }
    Xd = Xt.chunk({**chunks, "band": -1}).data
    yd = yt.chunk({**chunks, "target": -1}).data
    letters = "abcdefgh"[: len(lead)]
    args = [Xd, letters + "BYX", yd, letters + "KYX"]
    if wt is not None:
        args += [wt.chunk(chunks).data, letters + "YX"]
    stats = dsa.blockwise(
        partial(_block_cube, transform=transform, keepdims=len(lead) + 2),
        letters + "YXS",
        *args,
        new_axes={"S": _rk.stats_size(p_stats, k)},
        adjust_chunks={c: 1 for c in letters + "YX"},
        dtype=np.float64,
        concatenate=True,
        meta=np.empty((0,) * (len(lead) + 3), np.float64),
    )
    return stats, p, p_stats, k, info


def _block_cube(X, y, w=None, *, transform, keepdims: int = 0):
    p, k = X.shape[-3], y.shape[-3]
    rows = np.moveaxis(X, -3, -1).reshape(-1, p)
    targets = np.moveaxis(y, -3, -1).reshape(-1, k)
    weights = None if w is None else w.reshape(-1)
    out = _rk.block_stats(rows, targets, weights, transform)
    return out.reshape((1,) * keepdims + out.shape)


def _accumulate(X, y, sample_weight, *, transform=None, p_out=None):
    """Merge the statistics ``(Σw, x̄, ȳ, Cxx, Cxy)`` of any supported input, in one compute."""
    if isinstance(X, xr.DataArray):
        stats, p, p_stats, k, info = _cube_stats(X, y, sample_weight, transform, p_out)
    elif isinstance(X, xr.Dataset):
        raise InputError("X must be a DataArray cube with a 'band' dim, not a Dataset")
    else:
        if isinstance(y, xr.DataArray):
            y = y.data
        if isinstance(sample_weight, xr.DataArray):
            sample_weight = sample_weight.data
        stats, p, p_stats, k, info = _table_stats(X, y, sample_weight, transform, p_out)
    if isinstance(stats, dsa.Array):
        (stats,) = dask.compute(stats)  # xf: computes the per-block statistics (fitting)
    merged = _rk.combine_stats(stats, p_stats, k)
    if merged[0] <= 0:
        raise InputError(
            "no valid samples: every row has a NaN or infinite value in X, y or sample_weight; "
            "expected at least one row of finite values"
        )
    return merged, p, k, info


def _check_alpha(alpha) -> None:
    if np.any(np.asarray(alpha, dtype=float) < 0):
        raise InputError(f"alpha must be >= 0; got {alpha!r}")


def _table_for_predict(model, X) -> np.ndarray:
    """Rows of a numpy/pandas input, validated against the model's bands/feature count.

    DataFrame columns holding the model's bands in another order are reordered by name.
    """
    bands = getattr(model, "bands_", None)
    if isinstance(X, pd.DataFrame):
        cols = _names(X.columns)
        if bands is not None and cols != list(bands):
            if sorted(cols) != sorted(bands) or len(set(cols)) != len(cols):
                raise BandError(
                    f"DataFrame columns {cols} are not the model's bands {list(bands)} (the "
                    "same names are required; the order may differ)"
                )
            X = X[list(bands)]
        X = X.to_numpy(dtype=np.float64)
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[1] != model.n_features_in_:
        raise InputError(
            f"X must be (samples, {model.n_features_in_}) like the training data; got {X.shape}"
        )
    return X


class _Estimator(Estimator):
    """The ``predict`` dispatch, band naming and persistence shared by the ridge models.

    Parameters, ``repr`` and cloning follow scikit-learn's conventions through
    :class:`xfusion.models.base.Estimator`.
    """

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise ModelError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")

    def set_bands(self, bands):
        """Name the model's input bands, in its input order; returns ``self``.

        A model fitted on bare arrays records no band names, and :func:`~xfusion.predict`
        refuses a cube until it knows which band feeds which input: name them once here (or
        pass ``bands=`` to every ``predict``). Names set here replace recorded ones and are
        kept by :meth:`save`.

        Parameters
        ----------
        bands : sequence of str
            One unique name per input feature (``n_features_in_``).

        Raises
        ------
        BandError
            Not one unique string per input.
        ModelError
            The model is not fitted.

        Examples
        --------
        >>> import numpy as np
        >>> model = Ridge().fit(np.eye(3)[:, :2], [0.0, 1.0, 2.0])
        >>> model.bands_ is None, model.set_bands(["nir", "red"]).bands_
        (True, ['nir', 'red'])
        """
        from xfusion.models.predict import check_band_names

        self._check_fitted()
        self.bands_ = check_band_names(bands, int(self.n_features_in_), "set_bands")
        return self

    def predict(self, X, **kwargs):
        """Predict: lazy on a cube (``(…, band, y, x)``), eager on a numpy array or DataFrame.

        Parameters
        ----------
        X : xarray.DataArray, numpy.ndarray or pandas.DataFrame
            A cube holding the training bands (matched by name; a model fitted on bare arrays
            needs ``bands=`` or :meth:`set_bands` first), or rows of features (a DataFrame's
            columns are matched by name when the model records band names).
        **kwargs
            Passed to :func:`xfusion.models.predict.predict` for cubes (e.g. ``batch_size``,
            ``bands``).

        Returns
        -------
        xarray.DataArray or numpy.ndarray
            For a cube a lazy DataArray with band coordinate ``output_bands_``; for rows an
            array ``(samples,)`` (1-D target) or ``(samples, targets)``.
        """
        self._check_fitted()
        if isinstance(X, xr.DataArray):
            return _predict_cube(X, self, **kwargs)
        if isinstance(X, dsa.Array):
            k = len(self.output_bands_)
            squeeze = self._y_1d
            return X.rechunk({1: -1}).map_blocks(
                self._predict_rows,
                dtype=np.float64,
                drop_axis=1 if squeeze else None,
                chunks=(X.chunks[0],) if squeeze else (X.chunks[0], (k,)),
                meta=np.empty((0,) if squeeze else (0, 0), np.float64),
            )
        return self._predict_rows(_table_for_predict(self, X))

    def _predict_rows(self, rows: np.ndarray) -> np.ndarray:
        out = self._predict_2d(np.asarray(rows, dtype=np.float64))
        return out[:, 0] if self._y_1d else out

    def _finish_fit(self, p: int, k: int, info: dict[str, Any]) -> None:
        self.n_features_in_ = p
        self.bands_ = info["bands"]
        self.output_bands_ = info["output_bands"] or _output_names(k)
        self._y_1d = bool(info["y_1d"])

    # Persistence -------------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {
            "params": self.get_params(),
            "bands_": self.bands_,
            "output_bands_": self.output_bands_,
            "n_features_in_": int(self.n_features_in_),
            "y_1d": self._y_1d,
        }

    def save(self, path, *, fmt: str = "netcdf"):
        """Write the fitted model (parameters, bands, arrays; no pickle) to ``path``.

        Read it back with :func:`xfusion.load_model`.
        """
        from xfusion.models.persist import write_model

        self._check_fitted()
        return write_model(path, self, state=self._state(), fmt=fmt, extra=self._meta())

    @classmethod
    def _from_saved(cls, meta: dict[str, Any], state: dict[str, Any]):
        extra = meta.get("extra", meta)
        model = cls(**extra["params"])
        model.n_features_in_ = int(extra["n_features_in_"])
        model.bands_ = None if extra["bands_"] is None else list(extra["bands_"])
        if model.bands_ is not None and len(model.bands_) != model.n_features_in_:
            raise ModelError(
                f"the sidecar names {len(model.bands_)} bands {model.bands_} for "
                f"{model.n_features_in_} input features"
            )
        model.output_bands_ = list(extra["output_bands_"])
        model._y_1d = bool(extra["y_1d"])
        for name, value in state.items():
            setattr(model, name, np.asarray(value))
        model._restore()
        return model

    def _restore(self) -> None:
        """Rebuild derived attributes after loading (hook)."""


class Ridge(_Estimator):
    """Linear least squares with L2 regularisation, solved in closed form from one data pass.

    Minimises ``Σᵢ wᵢ ‖yᵢ − xᵢB − b‖² + α‖B‖²`` (scikit-learn's ``Ridge`` objective) for one or
    several targets. The data are reduced block by block to weighted, centred sufficient
    statistics, so a Dask-backed cube or table is read once and the design matrix is never held
    in memory. Rows with a NaN or ±inf in ``X``, ``y`` or ``sample_weight`` are dropped (so
    are pixels of a cube with such a value in any band or in the target).

    Parameters
    ----------
    alpha : float or array of shape (targets,)
        Regularisation strength λ (``alpha = 0`` is ordinary least squares).
    fit_intercept : bool
        Fit ``b`` (centre the data); otherwise the model passes through the origin.

    Attributes
    ----------
    coef_ : ndarray, (features,) or (targets, features)
    intercept_ : float or ndarray (targets,)
    n_features_in_ : int
    bands_ : list of str or None
        Band names of the training cube or DataFrame columns (None after a fit on bare
        arrays: name them with :meth:`set_bands`); ``predict`` checks cubes against them.
    output_bands_ : list of str
        Names of the predicted bands (the target cube's bands, else ``"prediction"``).

    Notes
    -----
    ``fit`` computes (one ``dask.compute`` of the per-block statistics, each chunk read once).
    The multitemporal cloud-masking loss ``β/n‖PₓW − P_y‖² + (1−β)/m‖EₓW − E_y‖² + λ‖W‖²``
    is ``Ridge(alpha=λ)`` fitted on the stacked prediction and estimation rows with
    ``sample_weight`` ``β/n`` for the ``n`` prediction rows and ``(1−β)/m`` for the ``m``
    estimation rows.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3))
    >>> y = X @ [1.0, -2.0, 0.5] + 3.0
    >>> model = Ridge(alpha=1e-6).fit(X, y)
    >>> np.round(model.coef_, 3), round(model.intercept_, 3)
    (array([ 1. , -2. ,  0.5]), 3.0)
    >>> model.predict(X[:2]).shape
    (2,)
    """

    def __init__(self, alpha: float = 1.0, *, fit_intercept: bool = True) -> None:
        self.alpha = alpha
        self.fit_intercept = fit_intercept

    def fit(self, X, y, sample_weight=None) -> Ridge:
        """Fit on rows or on a cube, reading every chunk once.

        Parameters
        ----------
        X : numpy/dask array (samples, features), pandas.DataFrame, or DataArray cube
            A cube has dims ``(band, y, x)`` or ``(time, band, y, x)``; every pixel is a sample.
        y : array (samples,) / (samples, targets), or DataArray on the cube's grid
            With a cube: ``(y, x)``, ``(time, y, x)`` or with a ``band`` dim for several targets.
        sample_weight : array (samples,) or DataArray on the cube's grid without ``band``

        Returns
        -------
        Ridge
            ``self``, fitted.
        """
        _check_alpha(self.alpha)
        stats, p, k, info = _accumulate(X, y, sample_weight)
        coef, intercept = _rk.solve_ridge(stats, self.alpha, fit_intercept=self.fit_intercept)
        self._finish_fit(p, k, info)
        self.coef_ = coef[0] if self._y_1d else coef
        self.intercept_ = float(intercept[0]) if self._y_1d else intercept
        return self

    def _predict_2d(self, rows: np.ndarray) -> np.ndarray:
        coef = np.atleast_2d(self.coef_)
        return rows @ coef.T + np.atleast_1d(self.intercept_)

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "coef_": np.asarray(self.coef_, np.float64),
            "intercept_": np.asarray(self.intercept_, np.float64),
        }

    def _restore(self) -> None:
        if self._y_1d:
            self.coef_ = np.asarray(self.coef_).reshape(-1)
            self.intercept_ = float(np.asarray(self.intercept_).reshape(-1)[0])


_METHODS = ("nystroem", "rff", "exact")
_BATCH = 16384
# rows per kernel-statistics batch (timed 1024-16384 on 200k x 11, m = 300: 4096 was fastest)
_BATCH_STATS = 4096


class KernelRidge(_Estimator):
    """Kernel ridge regression with the RBF kernel ``exp(−γ‖x − x'‖²)``, in JAX.

    ``method="exact"`` solves ``(K + αI)c = y`` on all samples (``O(n³)``, small ``n`` only) and
    equals scikit-learn's ``KernelRidge(kernel="rbf")`` (no intercept). ``"nystroem"`` (default)
    maps samples to ``n_components`` Nyström features built on randomly drawn landmark samples
    and ``"rff"`` to random Fourier features, then fits a :class:`Ridge` (with intercept) on the
    features in one blockwise pass; they equal scikit-learn's ``Nystroem`` + ``Ridge`` and
    ``RBFSampler`` + ``Ridge`` given the same landmarks / random state.

    Parameters
    ----------
    alpha : float
        Regularisation λ.
    gamma : float
        RBF width γ.
    n_components : int
        Number of landmarks / random features (ignored by ``"exact"``).
    method : {"nystroem", "rff", "exact"}
    random_state : int or None
        Seed of the landmark draw / random features (numpy ``RandomState``, as scikit-learn).
    sampling_factor : float, optional
        If given, ``n_components = ceil(sampling_factor · n_samples)`` (the multitemporal
        cloud-masking workflow's "sampling factor": the fraction of pixels used as kernel
        centres).

    Notes
    -----
    The cloud-masking workflow's kernel model (λ = 0.001, γ = 0.01, sampling factor 0.01) is
    ``KernelRidge(alpha=0.001, gamma=0.01, sampling_factor=0.01)``: λ is ``alpha``, γ is
    ``gamma`` and the sampled pixels are the Nyström landmarks, while every pixel (not only the
    sample) contributes to the fit. Its β weighting of prediction/estimation rows is passed as
    ``sample_weight`` (see :class:`Ridge`). ``fit`` on a numpy array or DataFrame computes in
    memory; on a cube or Dask array the Nyström/RFF fit reads the data twice (landmark sample,
    then the blockwise statistics) and ``"exact"`` loads the valid rows. The Nyström fit never
    forms the ``(samples, n_components)`` feature matrix ``Φ = K(x, L) Nᵀ``: it reduces the
    kernel block ``K(x, L)`` to sufficient statistics (in float64, batch by batch) and maps
    them through ``N`` (``ΦᵀΦ = N KᵀK Nᵀ``), and prediction computes ``K(x, L) (Nᵀ coefᵀ)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-2, 2, size=(300, 2))
    >>> y = np.sin(X[:, 0]) + 0.1 * X[:, 1]
    >>> model = KernelRidge(alpha=1e-3, gamma=0.5, n_components=50, random_state=0).fit(X, y)
    >>> bool(np.abs(model.predict(X) - y).max() < 0.05)
    True
    """

    def __init__(
        self,
        alpha: float = 1.0,
        gamma: float = 1.0,
        n_components: int = 100,
        method: str = "nystroem",
        random_state: int | None = None,
        *,
        sampling_factor: float | None = None,
    ) -> None:
        self.alpha = alpha
        self.gamma = gamma
        self.n_components = n_components
        self.method = method
        self.random_state = random_state
        self.sampling_factor = sampling_factor

    def fit(self, X, y, sample_weight=None, *, landmarks=None) -> KernelRidge:
        """Fit on rows or on a cube (inputs as :meth:`Ridge.fit`).

        Parameters
        ----------
        X, y, sample_weight
            As for :meth:`Ridge.fit`.
        landmarks : array (n_components, features), optional
            Nyström landmark samples to use instead of a random draw.

        Returns
        -------
        KernelRidge
            ``self``, fitted.
        """
        import jax

        from xfusion._kernels import kernel_ridge as _kr

        if self.method not in _METHODS:
            raise InputError(f"method must be one of {_METHODS}; got {self.method!r}")
        _check_alpha(self.alpha)
        if not self.gamma > 0:
            raise InputError(f"gamma must be > 0; got {self.gamma!r}")
        if self.method == "exact" or isinstance(X, np.ndarray | pd.DataFrame | list):
            rows, targets, weights, info = _valid_rows(X, y, sample_weight)
        else:
            rows = None
            info = None
        rng = np.random.RandomState(self.random_state)
        with jax.enable_x64(True):
            if self.method == "exact":
                self._fit_exact(rows, targets, weights, info)
                return self
            n = _n_samples(X) if rows is None else rows.shape[0]
            m = self._components(n)
            p = _n_features(X)
            if self.method == "nystroem":
                if landmarks is None:
                    landmarks = (
                        rows[rng.permutation(n)[:m]]
                        if rows is not None
                        else _sample_rows(X, y, sample_weight, m, rng)
                    )
                landmarks = np.asarray(landmarks, dtype=np.float64)
                if landmarks.ndim != 2 or landmarks.shape[1] != p:
                    raise InputError(f"landmarks must be (n, {p}); got shape {landmarks.shape}")
                self.landmarks_ = landmarks
                k_mm = _kr.rbf_kernel(landmarks, landmarks, self.gamma)
                # An (m × m) SVD gains nothing from BLAS threads, and spinning OpenBLAS workers
                # made it ~10× slower (1.2 s instead of 15 ms at m = 300) on a busy 2-core host.
                with threadpool_limits(limits=1, user_api="blas"):
                    self.normalization_ = np.asarray(_kr.nystroem_normalization(k_mm))
                # Statistics of the kernel block K(x, L), mapped through N afterwards: the
                # feature matrix Φ = K Nᵀ is never formed (see xfusion._kernels.kernel_ridge).
                n_out = landmarks.shape[0]
                if rows is not None:
                    stats = _kr.kernel_stats(
                        rows, targets, weights, landmarks, self.gamma, _BATCH_STATS
                    )
                    k = targets.shape[1]
                else:
                    stats, p, k, info = _accumulate(
                        X, y, sample_weight, transform=self._kernel_features, p_out=n_out
                    )
                with threadpool_limits(limits=1, user_api="blas"):
                    stats = _kr.project_stats(stats, self.normalization_)
            else:
                self.random_weights_ = np.sqrt(2 * self.gamma) * rng.normal(size=(p, m))
                self.random_offset_ = rng.uniform(0, 2 * np.pi, size=m)
                if rows is not None:
                    stats = _rk.combine_stats(
                        _rk.block_stats(rows, targets, weights, self._transform),
                        m,
                        targets.shape[1],
                    )
                    k = targets.shape[1]
                else:
                    stats, p, k, info = _accumulate(
                        X, y, sample_weight, transform=self._transform, p_out=m
                    )
            with threadpool_limits(limits=1, user_api="blas"):  # small dense solve, as above
                coef, intercept = _rk.solve_ridge(stats, self.alpha)
        self._finish_fit(p, k, info)
        self.coef_, self.intercept_ = coef, intercept
        self._restore()
        return self

    def _components(self, n: int) -> int:
        if self.sampling_factor is not None:
            if not 0 < self.sampling_factor <= 1:
                raise InputError(f"sampling_factor must be in (0, 1]; got {self.sampling_factor}")
            m = math.ceil(self.sampling_factor * n)
        else:
            m = int(self.n_components)
        if m < 1:
            raise InputError(f"n_components must be >= 1; got {m}")
        return min(m, n) if self.method == "nystroem" else m

    def _fit_exact(self, rows, targets, weights, info) -> None:
        from xfusion._kernels import kernel_ridge as _kr

        if weights is not None:
            sw = np.sqrt(weights)
            dual = _kr.exact_dual_weighted(rows, targets * sw[:, None], sw, self.alpha, self.gamma)
            dual = np.asarray(dual) * sw[:, None]
        else:
            dual = np.asarray(_kr.exact_dual(rows, targets, self.alpha, self.gamma))
        self.X_fit_ = rows
        self.dual_coef_ = dual
        self._finish_fit(rows.shape[1], targets.shape[1], info)

    def _kernel_features(self, rows: np.ndarray) -> np.ndarray:
        """``K(rows, landmarks)``: the Nyström features before the normalisation ``N``."""
        from xfusion._kernels import kernel_ridge as _kr

        fn = partial(_kr.rbf_kernel, b=self.landmarks_, gamma=self.gamma)
        return _kr.batched(fn, np.asarray(rows, dtype=np.float64), _BATCH)

    def _transform(self, rows: np.ndarray) -> np.ndarray:
        """Random Fourier features of ``rows``."""
        from xfusion._kernels import kernel_ridge as _kr

        fn = partial(_kr.rff_features, weights=self.random_weights_, offset=self.random_offset_)
        return _kr.batched(fn, np.asarray(rows, dtype=np.float64), _BATCH)

    def _predict_2d(self, rows: np.ndarray) -> np.ndarray:
        import jax

        from xfusion._kernels import kernel_ridge as _kr

        with jax.enable_x64(True):
            if self.method == "exact":
                fn = partial(
                    _kr.kernel_predict, x_fit=self.X_fit_, dual=self.dual_coef_, gamma=self.gamma
                )
                return _kr.batched(fn, rows, _BATCH)
            if self.method == "nystroem":
                # Φ coefᵀ = K(x, L) (Nᵀ coefᵀ): one (m × k) product instead of (m × m).
                fn = partial(
                    _kr.kernel_predict,
                    x_fit=self.landmarks_,
                    dual=self._kernel_coef,
                    gamma=self.gamma,
                )
                return _kr.batched(fn, rows, _BATCH) + self.intercept_
            return self._transform(rows) @ self.coef_.T + self.intercept_

    def _restore(self) -> None:
        if self.method == "nystroem":
            self._kernel_coef = np.asarray(self.normalization_).T @ np.atleast_2d(self.coef_).T

    def _state(self) -> dict[str, np.ndarray]:
        names = {
            "exact": ("X_fit_", "dual_coef_"),
            "nystroem": ("landmarks_", "normalization_", "coef_", "intercept_"),
            "rff": ("random_weights_", "random_offset_", "coef_", "intercept_"),
        }[self.method]
        return {name: np.asarray(getattr(self, name), np.float64) for name in names}


def _valid_rows(X, y, w):
    """Rows of any input as numpy (loads a cube or Dask array), NaN/inf rows dropped."""
    info: dict[str, Any] = {"bands": None, "output_bands": None}
    if isinstance(X, xr.DataArray):
        merged_info = _cube_stats(X, y, w, None, None)[4]
        info.update(merged_info)
        lead = [d for d in X.dims if d not in _SPATIAL]
        rows = X.transpose(*lead, "y", "x", "band").data.reshape(-1, X.sizes["band"])
        if _on_xy(X):  # on the cube's exact coordinates (checked in _cube_stats)
            y, w = (a if a is None or not _on_xy(a) else snap_to_grid(a, X) for a in (y, w))
        yt = y if "band" in y.dims else y.expand_dims("band")
        yt = yt.broadcast_like(X.isel(band=0, drop=True)).transpose(*lead, "y", "x", "band")
        targets = yt.data.reshape(-1, yt.sizes["band"])
        weights = None
        if w is not None:
            weights = w.broadcast_like(X.isel(band=0, drop=True)).transpose(*lead, "y", "x").data
            weights = weights.reshape(-1)
        rows, targets, weights = dask.compute(rows, targets, weights)  # xf: computes (exact fit)
    else:
        if isinstance(X, pd.DataFrame):
            info["bands"] = _column_names(X)
        if isinstance(y, pd.DataFrame):
            info["output_bands"] = _names(y.columns)
        rows, targets, weights = dask.compute(X, y, w)  # xf: computes (no-op for numpy)
        if isinstance(targets, pd.DataFrame | pd.Series):
            targets = targets.to_numpy()
        info["y_1d"] = np.ndim(targets) == 1
    rows = np.asarray(rows, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    targets = targets[:, None] if targets.ndim == 1 else targets
    if rows.ndim != 2 or targets.shape[0] != rows.shape[0]:
        raise InputError(
            "X (samples, features) and y must have the same rows; "
            f"got {rows.shape} and {targets.shape}"
        )
    valid = np.isfinite(rows).all(axis=1) & np.isfinite(targets).all(axis=1)
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        valid &= np.isfinite(weights)
        weights = weights[valid]
    if not valid.any():
        raise InputError(
            "no valid samples: every row has a NaN or infinite value in X, y or sample_weight; "
            "expected at least one row of finite values"
        )
    return rows[valid], targets[valid], weights, info


def _n_samples(X) -> int:
    if isinstance(X, xr.DataArray):
        return int(X.size // X.sizes["band"])
    return int(X.shape[0])


def _n_features(X) -> int:
    if isinstance(X, xr.DataArray):
        return int(X.sizes["band"])
    return int(X.shape[1])


def _sample_rows(X, y, w, m: int, rng: np.random.RandomState) -> np.ndarray:
    """Draw ``m`` valid rows of a cube or Dask table (one compute) as Nyström landmarks."""
    if isinstance(X, xr.DataArray):
        lead = [d for d in X.dims if d not in _SPATIAL]
        arr = dsa.asarray(X.transpose(*lead, "y", "x", "band").data)
    else:
        arr = dsa.asarray(X)
    n = math.prod(arr.shape[:-1])
    # Oversample so that NaN rows are unlikely to leave fewer than ``m`` valid ones.
    take = np.sort(rng.choice(n, size=min(n, 4 * m), replace=False))
    index = np.unravel_index(take, arr.shape[:-1])
    picked = arr.vindex[(*index, slice(None))] if arr.ndim > 2 else arr[take]
    (sample,) = dask.compute(picked)  # xf: computes a small landmark sample
    sample = np.asarray(sample, dtype=np.float64)
    sample = sample[np.isfinite(sample).all(axis=1)]
    if sample.shape[0] == 0:
        raise InputError("no valid samples found for the Nyström landmarks")
    return sample[rng.permutation(sample.shape[0])[:m]]
