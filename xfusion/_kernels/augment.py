"""The eight dihedral transforms (rotations by 90° and flips) of the last two axes of an array.

Written with slicing and ``swapaxes`` only, so the same code works on numpy, JAX and Dask arrays.
"""

from __future__ import annotations

from typing import Any

__all__ = ["dihedral"]


def _flip(x: Any, axis: int) -> Any:
    index = [slice(None)] * x.ndim
    index[axis] = slice(None, None, -1)
    return x[tuple(index)]


def _rot90(x: Any, k: int, axes: tuple[int, int]) -> Any:
    # numpy.rot90 semantics: counter-clockwise from axes[0] towards axes[1].
    k %= 4
    if k == 0:
        return x
    if k == 2:
        return _flip(_flip(x, axes[0]), axes[1])
    if k == 1:
        return _flip(x, axes[1]).swapaxes(*axes)
    return _flip(x.swapaxes(*axes), axes[1])


def dihedral(x: Any, k: int, *, axes: tuple[int, int] = (-2, -1), inverse: bool = False) -> Any:
    """Apply the dihedral transform number ``k`` (0..7) to the plane ``axes`` of ``x``.

    ``k % 4`` quarter turns (``numpy.rot90(x, k % 4, axes)``), then, for ``k >= 4``, a mirror of
    the second axis (``numpy.flip(..., axes[1])``). ``k = 0`` is the identity. This is the one
    numbering of the package: training augmentation (:mod:`xfusion.models.train`) and
    :func:`xfusion.patches` (``augment=True``, the ``dihedral`` coordinate) both use it. With
    ``inverse=True`` the transform is undone, which is what test-time augmentation needs after
    predicting on a transformed patch.

    Parameters
    ----------
    x : array
        numpy, JAX or Dask array.
    k : int
        Transform number, 0 to 7.
    axes : (int, int)
        The plane to transform; rotations of non-square planes swap their shape.
    inverse : bool
        Apply the inverse transform.

    Returns
    -------
    array
        Same type as ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.arange(4).reshape(2, 2)
    >>> dihedral(a, 1).tolist()
    [[1, 3], [0, 2]]
    >>> dihedral(a, 5).tolist()  # a quarter turn, then the mirror
    [[3, 1], [2, 0]]
    >>> dihedral(dihedral(a, 5), 5, inverse=True).tolist()
    [[0, 1], [2, 3]]
    """
    k = int(k)
    if not 0 <= k <= 7:
        raise ValueError(f"dihedral transform number must be in 0..7; got {k}")
    axes = (axes[0] % x.ndim, axes[1] % x.ndim)
    turns, mirror = k % 4, k >= 4
    if inverse:
        if mirror:
            x = _flip(x, axes[1])
        return _rot90(x, -turns, axes)
    x = _rot90(x, turns, axes)
    return _flip(x, axes[1]) if mirror else x
