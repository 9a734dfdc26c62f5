"""Cheap baselines to report beside every U-Net, to show whether the network is worth its cost.

A U-Net that does not beat a pixel ridge or an Otsu threshold on the same features is not
learning anything a user needs a GPU for. This module fits the strongest cheap baselines on the
same pixel table the network's features come from (a :class:`pandas.DataFrame` with one column
per band, e.g. from ``cube.xf.sample(...)``), scores them, and compares the network's score with
the best of them:

* regression: ``ridge`` (:class:`xfusion.models.Ridge`, standardised features), ``hgb``
  (scikit-learn ``HistGradientBoostingRegressor``), ``constant`` (the training mean) and, when a
  column holds the coarse value of each pixel (downscaling), ``coarse`` (that value as is);
* segmentation / classification: ``otsu`` (:class:`ThresholdClassifier`: an Otsu threshold on
  a named index band such as MNDWI, NDWI or SAR backscatter, its direction learned from the
  labels) and ``hgb`` (``HistGradientBoostingClassifier``).

Every fitted baseline records its band names (``feature_names_in_`` or ``bands_``), so it
predicts a whole cube lazily with ``cube.xf.predict(model)`` like any pixel model.

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> X = pd.DataFrame({"a": rng.normal(size=500), "b": rng.normal(size=500)})
>>> y = 2 * X["a"] + 0.1 * rng.normal(size=500)
>>> fitted = fit_baselines("regression", X, y, seed=0)
>>> sorted(fitted)
['constant', 'hgb', 'ridge']
>>> scores = score_baselines(fitted, X, y, task="regression")
>>> entry = compare({"rmse": 0.05}, scores, metric="rmse")
>>> entry["baseline"], entry["beats_baseline"]
('ridge', True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from xfusion.errors import BandError, InputError, ModelError
from xfusion.validate import require_bands

__all__ = [
    "CoarseValue",
    "HGBClassifier",
    "HGBRegressor",
    "ThresholdClassifier",
    "compare",
    "fit_baselines",
    "score_baselines",
    "score_predictions",
]

_REGRESSION = ("regression",)
_SEGMENTATION = ("segmentation", "classification")
_LOWER_IS_BETTER = ("rmse", "mae", "mse")
_HIGHER_IS_BETTER = ("r2", "iou", "accuracy", "f1")
# default margins: regression, RMSE at least 10 % lower; segmentation, IoU at least 0.05 higher
_RELATIVE_MARGIN = 0.10
_ABSOLUTE_MARGIN = 0.05


# ----------------------------------------------------------------------------------------------
# Pixel tables
# ----------------------------------------------------------------------------------------------


def _table(X: Any, what: str = "X") -> pd.DataFrame:
    if isinstance(X, pd.DataFrame):
        cols = list(X.columns)
        if not all(isinstance(c, str) for c in cols):
            raise BandError(
                f"{what} columns must be band names (strings); got {cols[:5]}: name them, e.g. "
                "X.columns = ['B04', 'B08', ...]"
            )
        return X
    raise InputError(
        f"{what} must be a pandas.DataFrame with one column per band (e.g. from "
        f"cube.xf.sample(...)); got {type(X).__name__}"
    )


def _target(y: Any, n: int, what: str = "y") -> np.ndarray:
    arr = np.asarray(y, dtype=np.float64).reshape(-1) if not isinstance(y, pd.Series) else None
    if arr is None:
        arr = y.to_numpy(dtype=np.float64)
    if arr.shape[0] != n:
        raise InputError(f"{what} has {arr.shape[0]} values for {n} rows of X; expected {n}")
    return arr


def _check_band(X: pd.DataFrame, band: str | None, what: str) -> None:
    if band is not None:
        require_bands(X.columns, band, "X (its columns)", by=what)


# ----------------------------------------------------------------------------------------------
# Baseline estimators that are not in scikit-learn
# ----------------------------------------------------------------------------------------------


class ThresholdClassifier(ClassifierMixin, BaseEstimator):
    """Two classes split by a threshold on one named band (an index: MNDWI, NDWI, VV in dB).

    Parameters
    ----------
    band : str
        The band (table column / cube band) that is thresholded.
    threshold : float, optional
        The threshold; by default Otsu's (``skimage.filters.threshold_otsu``) on the band's
        finite training values.
    above : bool, optional
        Class 1 is ``value > threshold`` (True) or ``value <= threshold`` (False). By default
        the direction that agrees better with the labels given to ``fit`` (True without labels).
    nbins : int
        Histogram bins of Otsu's method.

    Attributes
    ----------
    threshold_ : float
    above_ : bool
    classes_ : ndarray ``[0, 1]``
    feature_names_in_ : ndarray of str
        The columns of the training table: ``cube.xf.predict(model)`` takes a cube with these
        bands (only ``band`` is used).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> X = pd.DataFrame({"mndwi": np.r_[np.full(50, -0.4), np.full(50, 0.5)]})
    >>> model = ThresholdClassifier("mndwi").fit(X, np.r_[np.zeros(50), np.ones(50)])
    >>> bool(-0.4 < model.threshold_ < 0.5), model.above_
    (True, True)
    >>> model.predict(X.iloc[[0, -1]]).tolist()
    [0, 1]
    """

    def __init__(
        self,
        band: str,
        *,
        threshold: float | None = None,
        above: bool | None = None,
        nbins: int = 256,
    ) -> None:
        self.band = band
        self.threshold = threshold
        self.above = above
        self.nbins = nbins

    def fit(self, X: pd.DataFrame, y: Any = None) -> ThresholdClassifier:
        """Find the threshold (Otsu) and its direction; computes (reads the table).

        Parameters
        ----------
        X : pandas.DataFrame
            One column per band, including ``band``.
        y : array-like of {0, 1}, optional
            Labels (NaN rows ignored): they choose the direction when ``above`` is None.

        Returns
        -------
        ThresholdClassifier
            ``self``, fitted.

        Raises
        ------
        BandError
            ``band`` is not a column of ``X``.
        InputError
            Fewer than two distinct finite values of ``band``, or labels other than 0 and 1.
        """
        from skimage.filters import threshold_otsu

        X = _table(X)
        _check_band(X, self.band, "band")
        values = X[self.band].to_numpy(dtype=np.float64)
        finite = np.isfinite(values)
        if self.threshold is not None:
            threshold = float(self.threshold)
        else:
            if len(np.unique(values[finite])) < 2:
                raise InputError(
                    f"band {self.band!r} has fewer than two distinct finite values; Otsu's "
                    "threshold needs a histogram with two modes"
                )
            v = values[finite]
            otsu = float(threshold_otsu(v, nbins=int(self.nbins)))
            # Otsu returns the centre of the last bin of the lower class, so values in that
            # bin above its centre would change sides: split by bin, then cut mid-gap
            half_bin = 0.5 * (v.max() - v.min()) / int(self.nbins)
            lower, upper = v[v < otsu + half_bin], v[v >= otsu + half_bin]
            threshold = 0.5 * (lower.max() + upper.min()) if lower.size and upper.size else otsu
        above = True if self.above is None else bool(self.above)
        if y is not None:
            labels = _target(y, len(values))
            ok = finite & np.isfinite(labels)
            bad = np.setdiff1d(np.unique(labels[ok]), [0.0, 1.0])
            if bad.size:
                raise InputError(
                    f"ThresholdClassifier separates two classes; labels must be 0 and 1, got "
                    f"also {bad[:5].tolist()}"
                )
            if self.above is None and ok.any():
                hit = ((values[ok] > threshold) == (labels[ok] == 1)).mean()
                above = bool(hit >= 0.5)
        self.threshold_ = threshold
        self.above_ = above
        self.classes_ = np.array([0, 1])
        self.feature_names_in_ = np.array(list(X.columns), dtype=object)
        self.n_features_in_ = len(X.columns)
        return self

    def _column(self, X: Any) -> np.ndarray:
        if isinstance(X, pd.DataFrame):
            _check_band(X, self.band, "band")
            return X[self.band].to_numpy(dtype=np.float64)
        arr = np.asarray(X, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.n_features_in_:
            raise InputError(
                f"X must be a table of {self.n_features_in_} columns "
                f"{list(self.feature_names_in_)}; got shape {arr.shape}"
            )
        return arr[:, list(self.feature_names_in_).index(self.band)]

    def predict(self, X: Any) -> np.ndarray:
        """Class 0/1 per row (int); eager. For a cube use ``cube.xf.predict(model)``."""
        if not hasattr(self, "threshold_"):
            raise ModelError("this ThresholdClassifier is not fitted yet; call fit(X, y) first")
        v = self._column(X)
        hit = v > self.threshold_ if self.above_ else v <= self.threshold_
        return hit.astype(np.int64)


class CoarseValue(RegressorMixin, BaseEstimator):
    """The coarse observation itself as the fine prediction (the downscaling null model).

    Parameters
    ----------
    band : str
        The column that holds, per pixel, the coarse value of its cell (e.g. the coarse field
        resampled to the fine grid with ``nearest``).

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"ndvi": [0.1, 0.8], "sif_coarse": [0.5, 0.5]})
    >>> CoarseValue("sif_coarse").fit(X).predict(X).tolist()
    [0.5, 0.5]
    """

    def __init__(self, band: str) -> None:
        self.band = band

    def fit(self, X: pd.DataFrame, y: Any = None) -> CoarseValue:
        """Record the columns (nothing is learned); returns ``self``."""
        X = _table(X)
        _check_band(X, self.band, "band")
        self.feature_names_in_ = np.array(list(X.columns), dtype=object)
        self.n_features_in_ = len(X.columns)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Return the ``band`` column of ``X`` (float); eager."""
        if not hasattr(self, "feature_names_in_"):
            raise ModelError("this CoarseValue is not fitted yet; call fit(X) first")
        if isinstance(X, pd.DataFrame):
            _check_band(X, self.band, "band")
            return X[self.band].to_numpy(dtype=np.float64)
        arr = np.asarray(X, dtype=np.float64)
        return arr[:, list(self.feature_names_in_).index(self.band)]


def _one_thread(method):
    """Run ``method`` with one OpenMP thread (see :class:`_OneThread`)."""

    def wrapped(self, *args, **kwargs):
        with threadpool_limits(limits=1, user_api="openmp"):
            return method(self, *args, **kwargs)

    wrapped.__name__ = method.__name__
    wrapped.__doc__ = method.__doc__
    return wrapped


class _OneThreadHGB:
    """Histogram gradient boosting fitted and applied on one OpenMP thread.

    scikit-learn's OpenMP threads spin while they wait: on a machine whose cores are busy
    (Dask workers, JAX, other processes) a 2,000-row fit measured 182 s with the default pool
    against 2.5 s on one thread (2 busy cores). Baselines are cheap and a cube is predicted
    block by block in parallel anyway, so one thread per call is the predictable choice.
    """

    def fit(self, X, y, sample_weight=None):
        with threadpool_limits(limits=1, user_api="openmp"):
            return super().fit(X, y, sample_weight=sample_weight)

    def predict(self, X):
        with threadpool_limits(limits=1, user_api="openmp"):
            return super().predict(X)


class HGBRegressor(_OneThreadHGB, HistGradientBoostingRegressor):
    """scikit-learn's ``HistGradientBoostingRegressor`` on one OpenMP thread (same parameters)."""


class HGBClassifier(_OneThreadHGB, HistGradientBoostingClassifier):
    """scikit-learn's ``HistGradientBoostingClassifier`` on one OpenMP thread (same parameters)."""

    def predict_proba(self, X):
        """Class probabilities, on one OpenMP thread."""
        with threadpool_limits(limits=1, user_api="openmp"):
            return super().predict_proba(X)


class _ScaledRidge(RegressorMixin, BaseEstimator):
    """Standardised features, then :class:`xfusion.models.Ridge` (``alpha`` in z-units)."""

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def fit(self, X: pd.DataFrame, y: Any) -> _ScaledRidge:
        from xfusion.models.ridge import Ridge

        self.scaler_ = StandardScaler().fit(X)
        Z = pd.DataFrame(self.scaler_.transform(X), columns=list(X.columns))
        self.ridge_ = Ridge(alpha=self.alpha).fit(Z, np.asarray(y, np.float64))
        self.feature_names_in_ = np.array(list(X.columns), dtype=object)
        self.n_features_in_ = len(X.columns)
        return self

    def predict(self, X: Any) -> np.ndarray:
        cols = list(self.feature_names_in_)
        frame = X[cols] if isinstance(X, pd.DataFrame) else pd.DataFrame(X, columns=cols)
        z = self.scaler_.transform(frame)
        return np.asarray(self.ridge_.predict(pd.DataFrame(z, columns=cols)), np.float64)


# ----------------------------------------------------------------------------------------------
# Fit, score, compare
# ----------------------------------------------------------------------------------------------


def _task(task: str) -> str:
    if task in _REGRESSION:
        return "regression"
    if task in _SEGMENTATION:
        return "segmentation"
    raise InputError(f"task must be one of {[*_REGRESSION, *_SEGMENTATION]}; got {task!r}")


def fit_baselines(
    task: str,
    X: pd.DataFrame,
    y: Any,
    *,
    seed: int = 0,
    index_band: str | None = None,
    above: bool | None = None,
    coarse_band: str | None = None,
    alpha: float = 1.0,
    max_iter: int = 200,
) -> dict[str, Any]:
    """Fit the cheap baselines of ``task`` on a pixel table; computes (fits models).

    Parameters
    ----------
    task : {"regression", "segmentation", "classification"}
        ``"classification"`` is an alias of ``"segmentation"`` (labels per pixel).
    X : pandas.DataFrame
        One column per band (the network's input bands, e.g. ``cube.xf.sample(...)``); rows
        with a NaN target are left out. Gradient boosting takes NaN features as they are; the
        ridge leaves rows with a NaN feature out.
    y : array-like
        Target per row (regression), or class labels (segmentation; NaN: no label).
    seed : int
        ``random_state`` of the gradient boosting.
    index_band : str, optional
        Segmentation: the band Otsu's threshold splits (e.g. ``"mndwi"``, ``"VV"``); without
        it there is no ``otsu`` baseline. Binary labels (0/1) only.
    above : bool, optional
        Direction of the threshold (class 1 above it); by default learned from the labels.
    coarse_band : str, optional
        Regression: a column holding each pixel's coarse value (downscaling); adds the
        ``coarse`` baseline (:class:`CoarseValue`).
    alpha : float
        Ridge regularisation on standardised features.
    max_iter : int
        Boosting iterations of the gradient boosting.

    Returns
    -------
    dict of str to fitted estimator
        Regression: ``ridge``, ``hgb``, ``constant`` (and ``coarse``); segmentation: ``hgb``
        (and ``otsu``). Each predicts a cube with ``cube.xf.predict(model)``.

    Raises
    ------
    InputError
        Unknown task, ``X`` not a DataFrame of named columns, ``y`` of another length, no
        labelled row, a single class.
    BandError
        ``index_band`` or ``coarse_band`` is not a column of ``X``.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> v = np.r_[np.linspace(-0.6, -0.2, 60), np.linspace(0.2, 0.6, 40)]
    >>> X = pd.DataFrame({"mndwi": v, "nir": -v})
    >>> fitted = fit_baselines("segmentation", X, (v > 0).astype(int), index_band="mndwi")
    >>> sorted(fitted), fitted["otsu"].above_
    (['hgb', 'otsu'], True)
    """
    from sklearn.dummy import DummyRegressor

    kind = _task(task)
    X = _table(X)
    target = _target(y, len(X))
    _check_band(X, index_band, "index_band")
    _check_band(X, coarse_band, "coarse_band")
    keep = np.isfinite(target)
    if not keep.any():
        raise InputError("y has no finite value; expected at least one labelled row")
    Xk, yk = X.loc[keep].reset_index(drop=True), target[keep]
    fitted: dict[str, Any] = {}
    if kind == "regression":
        rows = np.isfinite(Xk.to_numpy(np.float64)).all(axis=1)
        if rows.sum() < 2:
            raise InputError("fewer than two rows with every feature finite; cannot fit a ridge")
        fitted["ridge"] = _ScaledRidge(alpha=alpha).fit(Xk.loc[rows], yk[rows])
        fitted["hgb"] = HGBRegressor(max_iter=max_iter, random_state=seed).fit(Xk, yk)
        fitted["constant"] = DummyRegressor(strategy="mean").fit(Xk, yk)
        if coarse_band is not None:
            fitted["coarse"] = CoarseValue(coarse_band).fit(Xk)
        return fitted
    classes = np.unique(yk)
    if classes.size < 2:
        raise InputError(f"labels hold a single class {classes.tolist()}; expected at least two")
    labels = yk.astype(np.int64) if np.all(classes == np.round(classes)) else yk
    fitted["hgb"] = HGBClassifier(max_iter=max_iter, random_state=seed).fit(Xk, labels)
    if index_band is not None:
        fitted["otsu"] = ThresholdClassifier(index_band, above=above).fit(Xk, yk)
    return fitted


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of class 1 for binary labels, else the mean IoU over the true classes."""
    classes = np.unique(truth)
    if set(classes.tolist()) <= {0, 1}:
        classes = np.array([1])
    ious = []
    for c in classes:
        p, t = pred == c, truth == c
        union = np.sum(p | t)
        ious.append(np.sum(p & t) / union if union else np.nan)
    return float(np.nanmean(ious)) if not np.all(np.isnan(ious)) else math.nan


def score_predictions(pred: Any, truth: Any, *, task: str) -> dict[str, float]:
    """Scores of predictions against the truth over the rows where both are finite (eager).

    Parameters
    ----------
    pred, truth : array-like of equal size
        Any shape (flattened); NaN marks rows without a prediction or a label.
    task : {"regression", "segmentation", "classification"}

    Returns
    -------
    dict
        Regression ``n``, ``rmse``, ``mae``, ``r2``; segmentation ``n``, ``iou`` (class 1 of
        binary labels, else mean over classes), ``accuracy``.

    Examples
    --------
    >>> score_predictions([1, 1, 0, 0], [1, 0, 0, 0], task="segmentation")["iou"]
    0.5
    """
    kind = _task(task)
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(truth, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise InputError(f"predictions have {p.size} values for {t.size} truth values")
    ok = np.isfinite(p) & np.isfinite(t)
    p, t = p[ok], t[ok]
    if not ok.any():
        raise InputError("no row has both a finite prediction and a finite truth value")
    if kind == "regression":
        err = p - t
        ss = float(np.sum((t - t.mean()) ** 2))
        return {
            "n": int(ok.sum()),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "mae": float(np.mean(np.abs(err))),
            "r2": 1.0 - float(np.sum(err**2)) / ss if ss > 0 else math.nan,
        }
    return {"n": int(ok.sum()), "iou": _iou(p, t), "accuracy": float(np.mean(p == t))}


def score_baselines(
    fitted: Mapping[str, Any], X: pd.DataFrame, y: Any, *, task: str
) -> dict[str, dict[str, float]]:
    """Score every fitted baseline on a (held-out) pixel table; computes (eager predictions).

    Parameters
    ----------
    fitted : dict of str to estimator
        From :func:`fit_baselines`.
    X : pandas.DataFrame
        The held-out rows, same columns as in ``fit_baselines``.
    y : array-like
        Their targets / labels (NaN: not scored).
    task : {"regression", "segmentation", "classification"}

    Returns
    -------
    dict of str to dict
        Per baseline, :func:`score_predictions` (rows with a NaN feature are predicted NaN by
        the ridge and scored without it; the other baselines score every labelled row).

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"ndwi": [-0.5, -0.4, 0.4, 0.5]})
    >>> fitted = {"otsu": ThresholdClassifier("ndwi").fit(X, [0, 0, 1, 1])}
    >>> score_baselines(fitted, X, [0, 0, 1, 1], task="segmentation")["otsu"]["iou"]
    1.0
    """
    X = _table(X)
    truth = _target(y, len(X))
    out = {}
    for name, model in fitted.items():
        pred = np.full(len(X), np.nan)
        rows = np.isfinite(X.to_numpy(np.float64)).all(axis=1)
        use_all = not isinstance(model, _ScaledRidge)
        sel = np.ones(len(X), bool) if use_all else rows
        if sel.any():
            pred[sel] = np.asarray(model.predict(X.loc[sel]), np.float64).reshape(-1)
        out[name] = score_predictions(pred, truth, task=task)
    return out


def compare(
    model_scores: Mapping[str, float] | float,
    baseline_scores: Mapping[str, Mapping[str, float]],
    *,
    metric: str,
    margin: float | None = None,
    higher_is_better: bool | None = None,
) -> dict[str, Any]:
    """Tell whether the model beats the best baseline by the margin (``metrics.json`` entries).

    Lower-is-better metrics (``rmse``, ``mae``, ``mse``) use a relative margin: the model must
    score at most ``(1 - margin) ×`` the best baseline (default ``margin=0.10``: RMSE at least
    10 % lower). Higher-is-better metrics (``iou``, ``r2``, ``accuracy``, ``f1``) use an absolute
    margin: at least the best baseline ``+ margin`` (default 0.05: IoU at least 0.05 higher).
    Exactly at the margin counts as beating it.

    Parameters
    ----------
    model_scores : dict or float
        The model's scores (``{metric: value, ...}``) or the value of ``metric``.
    baseline_scores : dict of str to dict
        Per baseline, its scores (from :func:`score_baselines`); baselines with a NaN or
        missing ``metric`` are left out.
    metric : str
        The metric compared.
    margin : float, optional
        See above; must be >= 0.
    higher_is_better : bool, optional
        Direction of ``metric``; inferred for the metrics named above, required otherwise.

    Returns
    -------
    dict
        ``{"baseline": best name, "baseline_<metric>": v, "model_<metric>": v,
        "beats_baseline": bool, "margin": margin, "margin_kind": "relative" | "absolute",
        "baselines": {name: value}}``.

    Raises
    ------
    InputError
        An unknown metric without ``higher_is_better``, a negative margin, no baseline with a
        finite value, a model score that is missing or NaN.

    Examples
    --------
    >>> base = {"otsu": {"iou": 0.70}, "hgb": {"iou": 0.60}}
    >>> compare({"iou": 0.75}, base, metric="iou")["beats_baseline"]
    True
    >>> compare({"iou": 0.74}, base, metric="iou")["beats_baseline"]
    False
    """
    if higher_is_better is None:
        if metric in _LOWER_IS_BETTER:
            higher_is_better = False
        elif metric in _HIGHER_IS_BETTER:
            higher_is_better = True
        else:
            raise InputError(
                f"metric {metric!r} is not one of {[*_LOWER_IS_BETTER, *_HIGHER_IS_BETTER]}; "
                "pass higher_is_better=True or False"
            )
    kind = "absolute" if higher_is_better else "relative"
    if margin is None:
        margin = _ABSOLUTE_MARGIN if higher_is_better else _RELATIVE_MARGIN
    margin = float(margin)
    if not margin >= 0:
        raise InputError(f"margin must be >= 0; got {margin}")
    if isinstance(model_scores, Mapping):
        if metric not in model_scores:
            raise InputError(f"model scores have no {metric!r}; they hold {sorted(model_scores)}")
        value = model_scores[metric]
    else:
        value = model_scores
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"the model's {metric} is {value}; expected a finite number")
    values = {
        name: float(s[metric])
        for name, s in baseline_scores.items()
        if metric in s and s[metric] is not None and math.isfinite(float(s[metric]))
    }
    if not values:
        raise InputError(
            f"no baseline has a finite {metric!r}; baselines are {sorted(baseline_scores)}"
        )
    pick = max if higher_is_better else min
    best = pick(values, key=values.get)
    ref = values[best]
    if higher_is_better:
        bar = ref + margin
        beats = value >= bar - 1e-12 * max(abs(bar), 1.0)
    else:
        bar = ref * (1.0 - margin)
        beats = value <= bar + 1e-12 * max(abs(bar), 1.0)
    return {
        "baseline": best,
        f"baseline_{metric}": ref,
        f"model_{metric}": value,
        "beats_baseline": bool(beats),
        "margin": margin,
        "margin_kind": kind,
        "baselines": values,
    }
