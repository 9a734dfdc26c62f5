"""Ridge regression from sufficient statistics, accumulated block by block (numpy only).

A block of rows ``X`` (n, p), targets ``Y`` (n, k) and weights ``w`` (n,) is reduced to a packed
float64 vector ``[Σw, x̄ (p), ȳ (k), Cxx (p·p), Cxy (p·k)]`` where the means are weighted and the
``C`` matrices are weighted sums of products of *centred* rows. Blocks are merged with the
pairwise update of Chan, Golub and LeVeque, which stays accurate when the means are large compared
with the spread (no ``XᵀX − n·x̄x̄ᵀ`` cancellation). The ridge system is then solved on the centred
statistics, the same problem scikit-learn's ``Ridge`` solves with ``fit_intercept=True``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from xfusion._kernels import threadpool as _threadpool

__all__ = ["block_stats", "combine_stats", "solve_ridge", "stats_size"]


def stats_size(p: int, k: int) -> int:
    """Length of the packed statistics vector for ``p`` features and ``k`` targets.

    Graph builders call this first: it also makes sure the one-BLAS-thread-per-task limit of
    the threaded scheduler is registered (:mod:`xfusion._kernels.threadpool`).
    """
    _threadpool.ensure_registered()
    return 1 + p + k + p * p + p * k


def block_stats(
    X: np.ndarray,
    Y: np.ndarray,
    w: np.ndarray | None = None,
    transform=None,
) -> np.ndarray:
    """Packed weighted, centred statistics of one block; rows with any NaN are dropped.

    ``transform`` (optional) maps the valid rows of ``X`` to features before the statistics are
    taken (used by the Nyström and random-Fourier-feature kernel ridge).
    """
    X = np.asarray(X)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    # a row sum is NaN/inf exactly when a value is (one pass, no (n, p) boolean temporary)
    valid = np.isfinite(X.sum(axis=1)) & np.isfinite(Y.sum(axis=1))
    if w is not None:
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        valid &= np.isfinite(w)
    if not valid.all():  # skip the copy in the common all-valid case
        X = X[valid]
        Y = Y[valid]
    if transform is not None:
        X = transform(X)
    X = np.asarray(X, dtype=np.float64)
    p, k = X.shape[1], Y.shape[1]
    out = np.zeros(stats_size(p, k), dtype=np.float64)
    if X.shape[0] == 0:
        return out
    # Products about the block mean, from raw products (no centred copy of the block): the
    # block-level cancellation costs ~(mean/std)² ulps, far below the 1e-6 target for
    # reflectance-like data; blocks are merged exactly (Chan et al.) in :func:`combine_stats`.
    if w is None:
        sw = float(X.shape[0])
        sx = X.sum(axis=0)
        sy = Y.sum(axis=0)
        gxx = X.T @ X
        gxy = X.T @ Y
    else:
        w = w[valid] if X.shape[0] != w.shape[0] else w
        sw = float(w.sum())
        if sw == 0.0:
            return out
        Xw = X * w[:, None]
        sx = Xw.sum(axis=0)
        sy = w @ Y
        gxx = Xw.T @ X
        gxy = Xw.T @ Y
    mx = sx / sw
    my = sy / sw
    out[0] = sw
    out[1 : 1 + p] = mx
    out[1 + p : 1 + p + k] = my
    out[1 + p + k : 1 + p + k + p * p] = (gxx - sw * np.outer(mx, mx)).ravel()
    out[1 + p + k + p * p :] = (gxy - sw * np.outer(mx, my)).ravel()
    return out


def _unpack(s: np.ndarray, p: int, k: int):
    sw = s[0]
    mx = s[1 : 1 + p]
    my = s[1 + p : 1 + p + k]
    cxx = s[1 + p + k : 1 + p + k + p * p].reshape(p, p)
    cxy = s[1 + p + k + p * p :].reshape(p, k)
    return sw, mx, my, cxx, cxy


def combine_stats(stacked: np.ndarray, p: int, k: int):
    """Merge packed block statistics (rows of ``stacked``) into ``(Σw, x̄, ȳ, Cxx, Cxy)``."""
    stacked = np.asarray(stacked, dtype=np.float64).reshape(-1, stats_size(p, k))
    sw = 0.0
    mx = np.zeros(p)
    my = np.zeros(k)
    cxx = np.zeros((p, p))
    cxy = np.zeros((p, k))
    for row in stacked:
        bw, bmx, bmy, bcxx, bcxy = _unpack(row, p, k)
        if bw <= 0:
            continue
        total = sw + bw
        dx = bmx - mx
        dy = bmy - my
        f = sw * bw / total
        cxx += bcxx + f * np.outer(dx, dx)
        cxy += bcxy + f * np.outer(dx, dy)
        mx = mx + dx * (bw / total)
        my = my + dy * (bw / total)
        sw = total
    return sw, mx, my, cxx, cxy


def solve_ridge(stats, alpha: float | np.ndarray, *, fit_intercept: bool = True):
    """Solve ``(Cxx + αI) B = Cxy``; return ``coef`` (k, p) and ``intercept`` (k,)."""
    sw, mx, my, cxx, cxy = stats
    if not fit_intercept:
        cxx = cxx + sw * np.outer(mx, mx)
        cxy = cxy + sw * np.outer(mx, my)
    p, k = cxy.shape
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (k,))
    coef = np.empty((k, p))
    if np.all(alpha == alpha[0]):
        coef[:] = _solve_spd(cxx + alpha[0] * np.eye(p), cxy).T
    else:
        for j in range(k):
            coef[j] = _solve_spd(cxx + alpha[j] * np.eye(p), cxy[:, j])
    intercept = my - coef @ mx if fit_intercept else np.zeros(k)
    return coef, intercept


def _solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a), b)
    except np.linalg.LinAlgError:  # singular (alpha = 0 with collinear features)
        return np.linalg.lstsq(a, b, rcond=None)[0]
