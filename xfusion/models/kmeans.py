"""k-means clustering of pixels as a model: fitted on a pixel sample, applied to a cube lazily.

:class:`KMeans` fits scikit-learn's k-means on a table of pixels (one column per band, e.g.
:func:`sample_pixels` of a cube), records the band names, and predicts a whole cube blockwise
with ``cube.xf.predict(model)`` like any pixel model: the nearest cluster centre of every pixel,
or the class given to that cluster with :meth:`KMeans.label_clusters` (clusters are unlabelled
until a workflow says what each one is, e.g. cloud for the clusters that brighten an image).
It is saved and loaded like the other models (:func:`xfusion.models.load_model`, no pickle):
the centres, the cluster classes and any per-cluster statistics are arrays of the weights
file, the class names part of the sidecar.

>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> table = pd.DataFrame({"B1": np.r_[rng.normal(0, 0.1, 50), rng.normal(1, 0.1, 50)]})
>>> model = KMeans(2, random_state=0).fit(table)
>>> dark = int(np.argmin(model.cluster_centers_[:, 0]))
>>> classes = np.where(np.arange(2) == dark, 0, 1)
>>> model.label_clusters(classes, names={0: "dark", 1: "bright"}).predict(table[:3]).tolist()
[0.0, 0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask
import dask.array as dsa
import numpy as np
import pandas as pd
import xarray as xr

from xfusion.errors import InputError, ModelError
from xfusion.models.base import Estimator

__all__ = ["KMeans", "sample_pixels"]


def sample_pixels(cube: xr.DataArray, n: int, *, seed: int = 0) -> pd.DataFrame:
    """Return up to ``n`` random pixels of a ``(band, y, x)`` cube as a table; computes.

    The pixels are drawn without replacement (``numpy.random.default_rng(seed)``), read in
    one computation (only the blocks they lie in), and those with a NaN in any band are
    dropped. Columns are the band names (which must be unique), rows in raster order.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.arange(8.0).reshape(2, 2, 2), dims=("band", "y", "x"),
    ...                     coords={"band": ["a", "b"]})
    >>> sample_pixels(cube, 10).to_numpy().tolist()
    [[0.0, 4.0], [1.0, 5.0], [2.0, 6.0], [3.0, 7.0]]
    """
    if set(cube.dims) != {"band", "y", "x"}:
        raise InputError(f"sample_pixels needs a (band, y, x) cube; got dims {cube.dims}")
    names = [str(b) for b in cube.band.values]
    if len(set(names)) != len(names):
        raise InputError(f"sample_pixels needs unique band names; got {names}")
    if n < 1:
        raise InputError(f"sample_pixels needs n >= 1; got {n}")
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(ny * nx, size=min(ny * nx, n), replace=False))
    iy, ix = np.unravel_index(take, (ny, nx))
    data = cube.transpose("y", "x", "band").data
    picked = data.vindex[iy, ix] if isinstance(data, dsa.Array) else data[iy, ix]
    (rows,) = dask.compute(picked)  # xf: computes the sampled pixels (what this function does)
    rows = np.asarray(rows, dtype=np.float64)
    return pd.DataFrame(rows[np.isfinite(rows).all(axis=1)], columns=names)


class KMeans(Estimator):
    """k-means clusters of pixels (scikit-learn's fit), predicting a cluster or class per pixel.

    Parameters
    ----------
    n_clusters : int
        Number of clusters (>= 2).
    n_init : int
        Restarts of scikit-learn's k-means; the best is kept.
    random_state : int
        Seed of the initialisation.

    Attributes
    ----------
    cluster_centers_ : ndarray (n_clusters, n_features)
    labels_ : ndarray (n_samples,)
        Cluster of every training row (not saved).
    n_features_in_ : int
    bands_ : list of str or None
        Columns of the training table (None after a fit on a bare array).
    cluster_classes_ : ndarray (n_clusters,) or None
        Class of every cluster, from :meth:`label_clusters`.
    class_names_ : dict of str to str
        Name of every class value (from :meth:`label_clusters`).
    cluster_info_ : dict of str to ndarray (n_clusters,)
        Per-cluster statistics a workflow recorded with :meth:`label_clusters` (saved).
    output_bands_ : list of str
        ``["cluster"]``, or ``["class"]`` once the clusters are labelled.
    """

    def __init__(self, n_clusters: int = 3, *, n_init: int = 4, random_state: int = 0) -> None:
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.random_state = random_state

    def _check_fitted(self) -> None:
        if not hasattr(self, "cluster_centers_"):
            raise ModelError("this KMeans is not fitted yet; call fit(X) first")

    def fit(self, X: Any, y: Any = None) -> KMeans:
        """Fit on a table of pixels (rows with a NaN are left out); computes.

        Parameters
        ----------
        X : pandas.DataFrame or ndarray (samples, features)
            A DataFrame's columns are recorded as the band names ``predict`` checks cubes by.
        y : ignored

        Returns
        -------
        KMeans
            ``self``, fitted.
        """
        from sklearn.cluster import KMeans as _SKKMeans

        if int(self.n_clusters) < 2 or int(self.n_init) < 1:
            raise InputError(
                f"KMeans needs n_clusters >= 2 and n_init >= 1; got {self.n_clusters}, "
                f"{self.n_init}"
            )
        bands = [str(c) for c in X.columns] if isinstance(X, pd.DataFrame) else None
        rows = np.asarray(X, dtype=np.float64)
        if rows.ndim != 2:
            raise InputError(f"X must be a table (samples, features); got shape {rows.shape}")
        rows = rows[np.isfinite(rows).all(axis=1)]
        if rows.shape[0] < self.n_clusters:
            raise InputError(
                f"only {rows.shape[0]} valid pixels to fit k-means with {self.n_clusters} clusters"
            )
        fitted = _SKKMeans(
            n_clusters=int(self.n_clusters), random_state=self.random_state, n_init=self.n_init
        ).fit(rows)
        self.cluster_centers_ = np.asarray(fitted.cluster_centers_, dtype=np.float64)
        self.labels_ = np.asarray(fitted.labels_)
        self.inertia_ = float(fitted.inertia_)
        self.n_features_in_ = rows.shape[1]
        self.bands_ = bands
        self.cluster_classes_: np.ndarray | None = None
        self.class_names_: dict[str, str] = {}
        self.cluster_info_: dict[str, np.ndarray] = {}
        self.output_bands_ = ["cluster"]
        return self

    def label_clusters(
        self,
        classes: Any,
        *,
        names: Mapping[Any, str] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> KMeans:
        """Give every cluster a class: ``predict`` then returns classes; returns ``self``.

        Parameters
        ----------
        classes : array-like (n_clusters,)
            The class value of each cluster (numbers; several clusters may share one).
        names : dict, optional
            Name of each class value (``{1: "cloud"}``), kept by :meth:`save`.
        info : dict of str to array-like (n_clusters,), optional
            Per-cluster statistics to keep with the model (e.g. the brightness that ordered
            them).
        """
        self._check_fitted()
        k = self.cluster_centers_.shape[0]
        table = np.asarray(classes, dtype=np.float32).reshape(-1)
        if table.shape != (k,) or not np.isfinite(table).all():
            raise InputError(f"classes must be {k} finite numbers, one per cluster; got {classes}")
        extra = {
            str(key): np.asarray(value, np.float64).reshape(-1)
            for key, value in (info or {}).items()
        }
        wrong = [key for key, value in extra.items() if value.shape != (k,)]
        if wrong:
            raise InputError(f"info {wrong} must hold one value per cluster ({k})")
        self.cluster_classes_ = table
        self.class_names_ = {
            str(int(v) if float(v).is_integer() else v): str(n) for v, n in (names or {}).items()
        }
        self.cluster_info_ = extra
        self.output_bands_ = ["class"]
        return self

    def clusters(self, X: Any) -> np.ndarray:
        """Return the nearest centre of every row (int), eager."""
        self._check_fitted()
        if isinstance(X, pd.DataFrame) and self.bands_ is not None:
            X = X[self.bands_]
        rows = np.asarray(X, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.n_features_in_:
            raise InputError(
                f"X must be (samples, {self.n_features_in_}) like the training data; got "
                f"{rows.shape}"
            )
        centers = self.cluster_centers_
        # scikit-learn's assignment: ‖c‖² − 2 x·c (‖x‖² is the same for every centre)
        distances = (centers**2).sum(axis=1) - 2.0 * rows @ centers.T
        return np.argmin(distances, axis=1)

    def predict(self, X: Any, **kwargs: Any) -> Any:
        """Cluster (or class, once labelled) of every pixel.

        Lazy on a cube (``cube.xf.predict(model)``, band ``output_bands_``, NaN where a band is
        NaN; ``kwargs`` go to :func:`xfusion.models.predict.predict`), eager on rows.
        """
        self._check_fitted()
        if isinstance(X, xr.DataArray):
            from xfusion.models.predict import predict

            return predict(X, self, **kwargs)
        labels = self.clusters(X)
        if self.cluster_classes_ is None:
            return labels
        return self.cluster_classes_[labels]

    # Persistence -------------------------------------------------------------------------------

    def save(self, path: Any, *, fmt: str = "netcdf") -> Any:
        """Write the fitted model (centres, classes, bands; no pickle) to the directory ``path``.

        Read it back with :func:`xfusion.models.load_model`.
        """
        from xfusion.models.persist import write_model

        self._check_fitted()
        state: dict[str, Any] = {"cluster_centers_": self.cluster_centers_}
        if self.cluster_classes_ is not None:
            state["cluster_classes_"] = self.cluster_classes_
        if self.cluster_info_:
            state["cluster_info_"] = dict(self.cluster_info_)
        extra = {
            "bands_": self.bands_,
            "output_bands_": self.output_bands_,
            "n_features_in_": int(self.n_features_in_),
            "training": {"inertia": self.inertia_, "class_names": self.class_names_},
        }
        return write_model(path, self, state=state, fmt=fmt, extra=extra)

    @classmethod
    def _from_saved(cls, meta: dict[str, Any], state: dict[str, Any]) -> KMeans:
        model = cls(**meta["params"])
        model.cluster_centers_ = np.asarray(state["cluster_centers_"], dtype=np.float64)
        model.n_features_in_ = int(meta["n_features_in_"])
        model.bands_ = None if meta["bands_"] is None else list(meta["bands_"])
        if model.cluster_centers_.shape != (int(model.n_clusters), model.n_features_in_):
            raise ModelError(
                f"saved centres have shape {model.cluster_centers_.shape}; expected "
                f"({model.n_clusters}, {model.n_features_in_})"
            )
        classes = state.get("cluster_classes_")
        model.cluster_classes_ = None if classes is None else np.asarray(classes, np.float32)
        model.cluster_info_ = {k: np.asarray(v) for k, v in state.get("cluster_info_", {}).items()}
        model.class_names_ = dict(meta["training"].get("class_names", {}))
        model.inertia_ = float(meta["training"].get("inertia", np.nan))
        model.output_bands_ = list(meta["output_bands_"])
        return model
