"""Rotation-invariant uniform local binary patterns on plain numpy arrays (numba).

The sampling reproduces :func:`skimage.feature.local_binary_pattern` with ``method="uniform"``
bit for bit: circle offsets rounded to 5 decimals, bilinear interpolation of the samples with
pixels outside the array read as 0, a neighbour counting as "set" when it is not darker than the
centre, and codes ``0..P`` for uniform patterns (the number of set neighbours) and ``P + 1`` for
the others.
"""

from __future__ import annotations

import math

import numpy as np

from xfusion._kernels import njit

__all__ = ["circle_offsets", "lbp_uniform"]


def circle_offsets(points: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the ``points`` circle samples, as scikit-image computes them.

    scikit-image passes the radius through a C ``float``, so it is rounded to float32 first.

    Examples
    --------
    >>> rows, cols = circle_offsets(4, 1)
    >>> rows.tolist(), cols.tolist()
    ([-0.0, -1.0, -0.0, 1.0], [1.0, 0.0, -1.0, -0.0])
    """
    r = float(np.float32(radius))
    angles = 2 * np.pi * np.arange(points, dtype=np.float64) / points
    return np.round(-r * np.sin(angles), 5), np.round(r * np.cos(angles), 5)


@njit(nogil=True)
def _pixel(image, k, r, c):
    if r < 0 or c < 0 or r >= image.shape[1] or c >= image.shape[2]:
        return 0.0
    return image[k, r, c]


@njit(nogil=True)
def _lbp_uniform_stack(image, rows, cols, row0, col0, out):
    points = rows.shape[0]
    signs = np.zeros(points, dtype=np.int8)
    for k in range(image.shape[0]):
        for r in range(image.shape[1]):
            for c in range(image.shape[2]):
                centre = image[k, r, c]
                if math.isnan(centre):
                    out[k, r, c] = np.nan
                    continue
                for i in range(points):
                    # Positions in global pixel indices: the interpolation weights then round
                    # exactly as for the whole array, wherever this block lies.
                    sr = (r + row0) + rows[i]
                    sc = (c + col0) + cols[i]
                    dr = sr - math.floor(sr)
                    dc = sc - math.floor(sc)
                    r0 = math.floor(sr) - row0
                    c0 = math.floor(sc) - col0
                    r1 = math.ceil(sr) - row0
                    c1 = math.ceil(sc) - col0
                    top = (1 - dc) * _pixel(image, k, r0, c0) + dc * _pixel(image, k, r0, c1)
                    bottom = (1 - dc) * _pixel(image, k, r1, c0) + dc * _pixel(image, k, r1, c1)
                    value = (1 - dr) * top + dr * bottom
                    # NaN neighbours compare False, i.e. count as darker than the centre.
                    signs[i] = 1 if value - centre >= 0 else 0
                changes = 0
                for i in range(points - 1):
                    changes += signs[i] != signs[i + 1]
                if changes <= 2:
                    total = 0
                    for i in range(points):
                        total += signs[i]
                    out[k, r, c] = total
                else:
                    out[k, r, c] = points + 1


def lbp_uniform(
    image: np.ndarray,
    points: int = 8,
    radius: float = 1,
    *,
    origin: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """Uniform LBP codes of every 2-D plane (last two axes) of ``image``, as float32.

    A NaN pixel gives NaN; a NaN neighbour counts as darker than the centre. Pixels outside the
    array are read as 0, as in scikit-image. ``origin`` is the (row, column) of ``image[0, 0]``
    in a larger image that ``image`` is a window of: sample positions are computed from the
    global indices so a window gives bit-identical codes to the whole image.

    Examples
    --------
    >>> import numpy as np
    >>> lbp_uniform(np.arange(9.0).reshape(3, 3))
    array([[8., 4., 2.],
           [3., 4., 2.],
           [1., 1., 0.]], dtype=float32)
    """
    image = np.asarray(image, dtype=np.float64)
    rows, cols = circle_offsets(points, radius)
    stack = np.ascontiguousarray(image.reshape((-1, *image.shape[-2:])))
    out = np.empty(stack.shape, dtype=np.float32)
    _lbp_uniform_stack(stack, rows, cols, int(origin[0]), int(origin[1]), out)
    return out.reshape(image.shape)
