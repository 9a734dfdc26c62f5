"""RBF kernel ridge building blocks in JAX: kernels, Nyström and random Fourier features.

Every function here works on plain arrays and is jitted; callers choose the precision by running
inside ``jax.enable_x64(True)`` (kernel systems are badly conditioned, so fitting uses float64).
Rows are processed in fixed-size, zero-padded batches (:func:`batched`) so each function compiles
once per batch shape instead of once per number of rows.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "batched",
    "exact_dual",
    "exact_dual_weighted",
    "kernel_predict",
    "nystroem_features",
    "nystroem_normalization",
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
