"""RBF kernel ridge building blocks in JAX: kernels, Nyström and random Fourier features.

Every function here works on plain arrays and is jitted; callers choose the precision by running
inside ``jax.enable_x64(True)`` (kernel systems are badly conditioned, so fitting uses float64).
Rows are processed in fixed-size, zero-padded batches (:func:`batched`) so each function compiles
once per batch shape instead of once per number of rows.

Nyström fitting never forms the feature matrix ``Φ = K(x, L) Nᵀ``: :func:`kernel_stats` reduces
the kernel block ``K(x, L)`` directly to centred sufficient statistics (one GEMM per batch, on
the device, merged exactly batch by batch) and :func:`project_stats` maps them through ``N``
afterwards (``C_ΦΦ = N C_KK Nᵀ``), which saves the ``n × m × m`` product with ``Nᵀ`` and the
``n × m`` feature matrix; prediction uses ``K(x, L) (Nᵀ coefᵀ)`` for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

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

_HIGHEST = jax.lax.Precision.HIGHEST


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


@partial(jax.jit, donate_argnums=(0,))
def _kernel_stats_step(acc, x, y, w, landmarks, gamma):
    """Merge one batch's weighted, centred statistics of ``K(x, L)`` into ``acc``.

    The batch is centred on its own weighted means before its Gram matrix is taken and merged
    with the pairwise update of Chan, Golub and LeVeque (as ``xfusion._kernels.ridge``), so no
    ``KᵀK − n·k̄k̄ᵀ`` cancellation builds up over many rows. Zero-weight rows (the padding of
    the last batch) contribute nothing.
    """
    sw, mk, my, ckk, cky = acc
    k = rbf_kernel(x, landmarks, gamma)
    bw = jnp.sum(w)
    safe_bw = jnp.where(bw > 0, bw, 1.0)
    bmk = jnp.dot(w, k, precision=_HIGHEST) / safe_bw
    bmy = jnp.dot(w, y, precision=_HIGHEST) / safe_bw
    kc = k - bmk
    kw = kc * w[:, None]
    bckk = jnp.dot(kw.T, kc, precision=_HIGHEST)
    bcky = jnp.dot(kw.T, y - bmy, precision=_HIGHEST)
    total = sw + bw
    safe_total = jnp.where(total > 0, total, 1.0)
    dk = bmk - mk
    dy = bmy - my
    f = sw * bw / safe_total
    ckk = ckk + bckk + f * jnp.outer(dk, dk)
    cky = cky + bcky + f * jnp.outer(dk, dy)
    mk = mk + dk * (bw / safe_total)
    my = my + dy * (bw / safe_total)
    return total, mk, my, ckk, cky


def kernel_stats(
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None,
    landmarks: np.ndarray,
    gamma: float,
    batch: int,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted, centred statistics ``(Σw, k̄, ȳ, C_KK, C_Ky)`` of the RBF kernel features.

    ``x`` (n, p) and ``y`` (n, k) hold valid rows only; ``K(x, L)`` is computed and reduced in
    batches of ``batch`` rows (the last one zero-padded with zero weight) and never held whole.
    Call inside ``jax.enable_x64(True)`` for float64 statistics.

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
    n, m = x.shape[0], landmarks.shape[0]
    dtype = jnp.result_type(float)
    if w is None:
        w = np.ones(n, dtype=dtype)
    size = min(batch, max(64, 1 << max(n - 1, 1).bit_length()))
    acc = (
        jnp.zeros((), dtype),
        jnp.zeros(m, dtype),
        jnp.zeros(y.shape[1], dtype),
        jnp.zeros((m, m), dtype),
        jnp.zeros((m, y.shape[1]), dtype),
    )
    landmarks = jnp.asarray(landmarks, dtype)
    for start in range(0, n, size):
        xb, yb, wb = x[start : start + size], y[start : start + size], w[start : start + size]
        short = size - xb.shape[0]
        if short:
            xb = np.concatenate([xb, np.zeros((short, xb.shape[1]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((short, yb.shape[1]), yb.dtype)])
            wb = np.concatenate([wb, np.zeros(short, wb.dtype)])
        acc = _kernel_stats_step(acc, xb, yb, wb, landmarks, gamma)
    sw, mk, my, ckk, cky = (np.asarray(a) for a in acc)
    return float(sw), mk, my, ckk, cky


def project_stats(stats, normalization: np.ndarray):
    """Statistics of the Nyström features ``Φ = K Nᵀ`` from those of ``K`` (exact, linear)."""
    sw, mk, my, ckk, cky = stats
    n = np.asarray(normalization)
    return sw, n @ mk, my, n @ ckk @ n.T, n @ cky
