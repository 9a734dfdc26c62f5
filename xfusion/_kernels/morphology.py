"""Binary morphology on plain numpy arrays (no xarray): dilation by a disk.

The dilation works row by row: a disk of radius ``r`` is, for every row offset ``dy``, a run of
columns ``|dx| <= half_widths[dy]``. A prefix count of set pixels per input row answers "is any
pixel set in this run" in constant time, so the cost is ``O(rows * cols * (2r + 1))`` whatever the
radius, and pixels outside the array count as unset.
"""

from __future__ import annotations

import numpy as np

from xfusion._kernels import njit

__all__ = ["binary_dilate_disk", "disk", "disk_half_widths"]


def disk_half_widths(radius: int) -> np.ndarray:
    """Half-width of the disk ``dx**2 + dy**2 <= radius**2`` on each row ``dy = -radius..radius``.

    Examples
    --------
    >>> disk_half_widths(2).tolist()
    [0, 1, 2, 1, 0]
    """
    r = int(radius)
    dy = np.arange(-r, r + 1)
    return np.floor(np.sqrt(r * r - dy * dy) + 1e-9).astype(np.int64)


def disk(radius: int) -> np.ndarray:
    """Boolean disk structuring element of shape ``(2r+1, 2r+1)`` (as ``skimage.morphology.disk``).

    Examples
    --------
    >>> disk(1).astype(int).tolist()
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    """
    r = int(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    return dx * dx + dy * dy <= r * r


@njit(nogil=True)
def _dilate_stack(mask: np.ndarray, half_widths: np.ndarray) -> np.ndarray:  # pragma: no cover
    n, rows, cols = mask.shape
    r = (half_widths.shape[0] - 1) // 2
    out = np.zeros((n, rows, cols), dtype=np.bool_)
    # prefix[k, i, j] = number of set pixels in mask[k, i, :j]
    prefix = np.zeros((rows, cols + 1), dtype=np.int32)
    for k in range(n):
        for i in range(rows):
            acc = 0
            prefix[i, 0] = 0
            for j in range(cols):
                if mask[k, i, j]:
                    acc += 1
                prefix[i, j + 1] = acc
        for i in range(rows):
            for j in range(cols):
                hit = False
                for t in range(2 * r + 1):
                    ii = i + t - r
                    if ii < 0 or ii >= rows:
                        continue
                    w = half_widths[t]
                    lo = j - w
                    hi = j + w + 1
                    if lo < 0:
                        lo = 0
                    if hi > cols:
                        hi = cols
                    if prefix[ii, hi] - prefix[ii, lo] > 0:
                        hit = True
                        break
                out[k, i, j] = hit
    return out


def binary_dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate a boolean array over its last two axes by a disk of ``radius`` pixels.

    Pixels outside the array count as unset (``False``). The result equals
    ``scipy.ndimage.binary_dilation(mask, structure=disk(radius))`` applied to each 2-D slice.

    Parameters
    ----------
    mask : numpy.ndarray
        Boolean (or 0/1) array with at least two dimensions; the last two are ``(y, x)``.
    radius : int
        Disk radius in pixels, ``>= 0``.

    Returns
    -------
    numpy.ndarray
        Boolean array of the same shape.

    Examples
    --------
    >>> m = np.zeros((5, 5), bool)
    >>> m[2, 2] = True
    >>> binary_dilate_disk(m, 1).astype(int)[1:4, 1:4].tolist()
    [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim < 2:
        raise ValueError(f"mask needs at least 2 dimensions (y, x); got shape {mask.shape}")
    if radius == 0 or mask.size == 0:
        return mask.copy()
    stack = np.ascontiguousarray(mask.reshape((-1, *mask.shape[-2:])))
    return _dilate_stack(stack, disk_half_widths(radius)).reshape(mask.shape)
