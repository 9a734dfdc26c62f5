"""RBF kernel ridge building blocks in JAX: kernels, Nyström and random Fourier features.

Every function here works on plain arrays and is jitted; callers choose the precision by running
inside ``jax.enable_x64(True)`` (kernel systems are badly conditioned, so fitting uses float64).
Rows are processed in fixed-size, zero-padded batches (:func:`batched`) so each function compiles
once per batch shape instead of once per number of rows.

Nyström fitting never forms the feature matrix ``Φ = K(x, L) Nᵀ``: :func:`kernel_stats` reduces
the kernel block ``K(x, L)`` directly to centred sufficient statistics (one symmetric rank-k
update per batch, merged exactly batch by batch) and :func:`project_stats` maps them through ``N``
afterwards (``C_ΦΦ = N C_KK Nᵀ``), which saves the ``n × m × m`` product with ``Nᵀ`` and the
``n × m`` feature matrix; prediction uses ``K(x, L) (Nᵀ coefᵀ)`` for the same reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits

__all__ = [
    "batched",
    "exact_dual",
    "exact_dual_weighted",
    "kernel_predict",
    "kernel_stats",
    "nystroem_features",
    "nystroem_normalization",
    "project_stats",
    "rbf_kernel",
    "rff_features",
]


@jax.jit
def rbf_kernel(a: jax.Array, b: jax.Array, gamma: float) -> jax.Array:
    """``exp(-γ‖a_i − b_j‖²)`` for rows ``a`` (n, p) and ``b`` (m, p)."""
    d2 = (
        jnp.sum(a * a, axis=1)[:, None]
        + jnp.sum(b * b, axis=1)[None, :]
        - 2.0 * jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)
    )
    return jnp.exp(-gamma * jnp.maximum(d2, 0.0))


@jax.jit
def nystroem_normalization(k_mm: jax.Array) -> jax.Array:
    """``K_mm^{-1/2}`` through an SVD, singular values floored at 1e-12 (as scikit-learn)."""
    u, s, vt = jnp.linalg.svd(k_mm, full_matrices=False)
    s = jnp.maximum(s, 1e-12)
    return jnp.dot(u / jnp.sqrt(s), vt, precision=jax.lax.Precision.HIGHEST)


@jax.jit
def nystroem_features(
    x: jax.Array, landmarks: jax.Array, normalization: jax.Array, gamma: float
) -> jax.Array:
    """Nyström feature map ``K(x, L) · N^T`` (n, m)."""
    return jnp.dot(
        rbf_kernel(x, landmarks, gamma), normalization.T, precision=jax.lax.Precision.HIGHEST
    )


@jax.jit
def rff_features(x: jax.Array, weights: jax.Array, offset: jax.Array) -> jax.Array:
    """Random Fourier features ``√(2/D) cos(xW + b)`` approximating the RBF kernel."""
    proj = jnp.dot(x, weights, precision=jax.lax.Precision.HIGHEST) + offset
    return jnp.sqrt(2.0 / weights.shape[1]) * jnp.cos(proj)


@jax.jit
def exact_dual(x: jax.Array, y: jax.Array, alpha: float, gamma: float) -> jax.Array:
    """Dual coefficients of exact kernel ridge: ``(K + αI)⁻¹ y`` by Cholesky."""
    k = rbf_kernel(x, x, gamma)
    k = k + alpha * jnp.eye(k.shape[0], dtype=k.dtype)
    c = jax.scipy.linalg.cho_factor(k, lower=True)
    return jax.scipy.linalg.cho_solve(c, y)


@jax.jit
def exact_dual_weighted(
    x: jax.Array, y_scaled: jax.Array, sqrt_w: jax.Array, alpha: float, gamma: float
) -> jax.Array:
    """Weighted exact kernel ridge: solve ``(S K S + αI) z = S y`` (``S = diag(√w)``).

    The dual coefficients are ``S z`` (scikit-learn's weighting of ``KernelRidge``).
    """
    k = rbf_kernel(x, x, gamma) * sqrt_w[:, None] * sqrt_w[None, :]
    k = k + alpha * jnp.eye(k.shape[0], dtype=k.dtype)
    c = jax.scipy.linalg.cho_factor(k, lower=True)
    return jax.scipy.linalg.cho_solve(c, y_scaled)


@jax.jit
def kernel_predict(x: jax.Array, x_fit: jax.Array, dual: jax.Array, gamma: float) -> jax.Array:
    """``K(x, x_fit) · dual``."""
    return jnp.dot(rbf_kernel(x, x_fit, gamma), dual, precision=jax.lax.Precision.HIGHEST)


def batched(fn: Callable[[jax.Array], jax.Array], x: np.ndarray, batch: int) -> np.ndarray:
    """Apply ``fn`` to rows of ``x`` in zero-padded batches of ``batch`` rows; concatenate.

    Fewer rows than ``batch`` are padded to the next power of two (at least 64), so small calls
    do not pay for a full batch and the number of compiled shapes stays logarithmic.
    """
    n = x.shape[0]
    if n <= batch:
        size = max(64, 1 << max(n - 1, 1).bit_length())
        size = min(size, batch)
        pad = np.zeros((size - n, *x.shape[1:]), dtype=x.dtype)
        return np.asarray(fn(jnp.asarray(np.concatenate([x, pad]))))[:n]
    parts = []
    for start in range(0, n, batch):
        chunk = x[start : start + batch]
        m = chunk.shape[0]
        if m < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - m, *x.shape[1:]), dtype=x.dtype)])
        parts.append(np.asarray(fn(jnp.asarray(chunk)))[:m])
    return np.concatenate(parts)


def kernel_stats(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None,
    landmarks: np.ndarray,
    gamma: float,
    batch: int,
    *,
    workers: int | None = None,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted, centred statistics ``(Σw, k̄, ȳ, C_KK, C_Ky)`` of the RBF kernel features.

    ``x`` (n, p) and ``y`` (n, k) hold valid rows only. ``K(x, L)`` is computed in JAX in
    batches of ``batch`` rows (never held whole); each batch is centred on its own weighted
    means, its Gram matrix taken with a single-threaded BLAS ``syrk``/``gemm``, and the batches
    are merged with the pairwise update of Chan, Golub and LeVeque (as
    :func:`xfusion._kernels.ridge.combine_stats`), so no ``KᵀK − n·k̄k̄ᵀ`` cancellation builds
    up. Batches run on ``workers`` threads (default: one per CPU) with BLAS limited to one
    thread each: spinning multi-threaded OpenBLAS workers were 4× slower than one thread on a
    busy 2-core host. Call inside ``jax.enable_x64(True)`` for float64 statistics.

    Examples
    --------
    The same statistics as :func:`xfusion._kernels.ridge.block_stats` on the explicit kernel
    matrix, and through :func:`project_stats` on features ``K Nᵀ`` for any matrix ``N``:

    >>> import jax, numpy as np
    >>> from xfusion._kernels import ridge
    >>> rng = np.random.default_rng(0)
    >>> x, y, w = rng.uniform(size=(100, 3)), rng.normal(size=(100, 1)), rng.uniform(size=100)
    >>> with jax.enable_x64(True):
    ...     stats = kernel_stats(x, y, w, x[:10], 0.5, batch=64)
    ...     k = np.asarray(rbf_kernel(x, x[:10], 0.5))
    >>> ref = ridge.combine_stats(ridge.block_stats(k, y, w), 10, 1)
    >>> all(np.allclose(a, b, rtol=1e-10) for a, b in zip(stats, ref))
    True
    >>> n = rng.normal(size=(10, 10))
    >>> ref = ridge.combine_stats(ridge.block_stats(k @ n.T, y, w), 10, 1)
    >>> all(np.allclose(a, b, rtol=1e-8) for a, b in zip(project_stats(stats, n), ref))
    True
    """
    n, m, k = x.shape[0], landmarks.shape[0], y.shape[1]
    size = min(batch, max(64, 1 << max(n - 1, 1).bit_length()))
    landmarks = jnp.asarray(landmarks)
    # jax.enable_x64 is thread-local: carry the caller's precision into the worker threads
    x64 = jnp.result_type(float) == jnp.float64

    def one(start: int):
        xb, yb = x[start : start + size], y[start : start + size]
        rows = xb.shape[0]
        if rows < size:  # one compiled shape: pad the last batch
            xb = np.concatenate([xb, np.zeros((size - rows, xb.shape[1]), xb.dtype)])
        with jax.enable_x64(x64):
            kb = np.asarray(rbf_kernel(xb, landmarks, gamma))[:rows]
        if w is None:
            bw = float(rows)
            bmk, bmy = kb.mean(axis=0), yb.mean(axis=0)
            kc = kb - bmk
            return bw, bmk, bmy, kc.T @ kc, kc.T @ (yb - bmy)
        wb = w[start : start + size]
        bw = float(wb.sum())
        if bw == 0.0:
            return None
        bmk, bmy = wb @ kb / bw, wb @ yb / bw
        kc = kb - bmk
        kw = kc * wb[:, None]
        return bw, bmk, bmy, kw.T @ kc, kw.T @ (yb - bmy)

    sw, mk, my = 0.0, np.zeros(m), np.zeros(k)
    ckk, cky = np.zeros((m, m)), np.zeros((m, k))
    workers = workers or os.cpu_count() or 1
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
        for part in pool.map(one, range(0, n, size)):
            if part is None:
                continue
            bw, bmk, bmy, bckk, bcky = part
            total = sw + bw
            dk, dy = bmk - mk, bmy - my
            f = sw * bw / total
            ckk += bckk
            ckk += f * np.outer(dk, dk)
            cky += bcky + f * np.outer(dk, dy)
            mk += dk * (bw / total)
            my += dy * (bw / total)
            sw = total
    return sw, mk, my, ckk, cky


def project_stats(stats, normalization: np.ndarray):
    """Statistics of the Nyström features ``Φ = K Nᵀ`` from those of ``K`` (exact, linear)."""
    sw, mk, my, ckk, cky = stats
    n = np.asarray(normalization)
    return sw, n @ mk, my, n @ ckk @ n.T, n @ cky
