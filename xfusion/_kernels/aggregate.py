"""Nan-aware aggregation of aligned ``ky × kx`` pixel blocks (numpy + numba, no xarray).

A coarse output pixel ``(i, j)`` covers the fine source pixels
``[i*ky, (i+1)*ky) × [j*kx, (j+1)*kx)`` of its block. The source may arrive in several *pieces*
(the Dask chunks that intersect one output block); each piece is placed by its offset
``(row, col)`` in source pixels from the block's top-left corner. Pieces need not cover the
block: missing pixels are treated as nodata, which is how partial (fractional) edge blocks are
handled. NaN is nodata.

Methods
-------
``average``
    Mean of the valid pixels in the block. On an aligned grid every fine pixel lies entirely in one
    coarse pixel, so this is exactly the area-weighted mean over the valid area.
``sum``
    Sum of the valid pixels (the total of a field is conserved).
``min`` / ``max``
    Extremes of the valid pixels.
``bitwise_or``
    Bitwise OR of the valid pixels (bit-flag bands such as Landsat ``QA_PIXEL``: a coarse pixel
    has a flag when any of its fine pixels has it). Values are taken as whole numbers (cast to
    int64); a fractional part is dropped.
``mode``
    The most frequent valid value. Ties are broken as GDAL does: scanning the block row by row,
    the value that reached the highest count first wins (so with all values distinct, the first
    valid pixel).

A block with no valid pixel is NaN for every method.

Sums are accumulated in float64 per block, in one pass over the source memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xfusion._kernels import njit

__all__ = ["METHODS", "aggregate_blocks", "aggregate_pieces"]

METHODS = ("average", "sum", "min", "max", "mode", "bitwise_or")


@njit(nogil=True)
def _accumulate_sum(a, row, col, ky, kx, acc, cnt):  # pragma: no cover - compiled
    nl, h, w = a.shape
    for lead in range(nl):
        for i in range(h):
            orow = (row + i) // ky
            j = 0
            while j < w:
                ocol = (col + j) // kx
                end = min(w, (ocol + 1) * kx - col)
                s = 0.0
                n = 0
                for q in range(j, end):
                    v = a[lead, i, q]
                    if v == v:
                        s += v
                        n += 1
                acc[lead, orow, ocol] += s
                cnt[lead, orow, ocol] += n
                j = end


@njit(nogil=True)
def _accumulate_min(a, row, col, ky, kx, acc, cnt):  # pragma: no cover - compiled
    nl, h, w = a.shape
    for lead in range(nl):
        for i in range(h):
            orow = (row + i) // ky
            j = 0
            while j < w:
                ocol = (col + j) // kx
                end = min(w, (ocol + 1) * kx - col)
                m = np.inf
                n = 0
                for q in range(j, end):
                    v = a[lead, i, q]
                    if v == v:
                        if v < m:
                            m = v
                        n += 1
                if n > 0 and m < acc[lead, orow, ocol]:
                    acc[lead, orow, ocol] = m
                cnt[lead, orow, ocol] += n
                j = end


@njit(nogil=True)
def _accumulate_max(a, row, col, ky, kx, acc, cnt):  # pragma: no cover - compiled
    nl, h, w = a.shape
    for lead in range(nl):
        for i in range(h):
            orow = (row + i) // ky
            j = 0
            while j < w:
                ocol = (col + j) // kx
                end = min(w, (ocol + 1) * kx - col)
                m = -np.inf
                n = 0
                for q in range(j, end):
                    v = a[lead, i, q]
                    if v == v:
                        if v > m:
                            m = v
                        n += 1
                if n > 0 and m > acc[lead, orow, ocol]:
                    acc[lead, orow, ocol] = m
                cnt[lead, orow, ocol] += n
                j = end


@njit(nogil=True)
def _accumulate_or(a, row, col, ky, kx, acc, cnt):  # pragma: no cover - compiled
    nl, h, w = a.shape
    for lead in range(nl):
        for i in range(h):
            orow = (row + i) // ky
            j = 0
            while j < w:
                ocol = (col + j) // kx
                end = min(w, (ocol + 1) * kx - col)
                m = np.int64(0)
                n = 0
                for q in range(j, end):
                    v = a[lead, i, q]
                    if v == v:
                        m |= np.int64(v)
                        n += 1
                acc[lead, orow, ocol] |= m
                cnt[lead, orow, ocol] += n
                j = end


@njit(nogil=True)
def _mode_blocks(a, ky, kx, out):  # pragma: no cover - compiled
    nl, oh, ow = out.shape
    buf = np.empty(ky * kx, dtype=np.float64)
    for lead in range(nl):
        for i in range(oh):
            for j in range(ow):
                n = 0
                for p in range(i * ky, (i + 1) * ky):
                    for q in range(j * kx, (j + 1) * kx):
                        v = a[lead, p, q]
                        if v == v:
                            buf[n] = v
                            n += 1
                if n == 0:
                    out[lead, i, j] = np.nan
                    continue
                # stable sort: within a run of equal values the scan positions stay ascending
                order = np.argsort(buf[:n], kind="mergesort")
                best = buf[order[0]]
                best_run = 0
                best_reached = n
                start = 0
                for t in range(1, n + 1):
                    if t == n or buf[order[t]] != buf[order[start]]:
                        run = t - start
                        # position in the scan where this value reached its final count
                        reached = order[t - 1]
                        if run > best_run or (run == best_run and reached < best_reached):
                            best_run = run
                            best_reached = reached
                            best = buf[order[start]]
                        start = t
                out[lead, i, j] = best


def _as3d(a: np.ndarray) -> np.ndarray:
    if a.ndim < 2:
        raise ValueError(f"expected an array with at least 2 dims (y, x); got shape {a.shape}")
    if a.dtype.kind not in "f" or a.dtype.itemsize < 4:
        # numba has no float16 arithmetic; integers become float so NaN can mark nodata
        a = a.astype(np.float32)
    return a.reshape((-1, *a.shape[-2:]))


def aggregate_pieces(
    pieces: Sequence[tuple[np.ndarray, int, int]],
    out_shape: tuple[int, ...],
    factor: tuple[int, int],
    method: str = "average",
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Aggregate source pieces into one output block of shape ``out_shape`` (``(..., H, W)``).

    Parameters
    ----------
    pieces : sequence of (array, row, col)
        Source arrays of shape ``(..., h, w)`` (same leading shape as ``out_shape``) and the
        offset of their top-left pixel, in source pixels, from the output block's top-left corner.
        Each must fit inside ``H*ky × W*kx``; pieces must not overlap.
    out_shape : tuple of int
        Shape of the output block.
    factor : (ky, kx)
        Integer aggregation factors along y and x.
    method : {"average", "sum", "min", "max", "mode", "bitwise_or"}
        Reduction, see the module docstring.
    dtype : numpy dtype
        Output dtype (float).

    Returns
    -------
    numpy.ndarray
        Array of ``out_shape``; NaN where a block holds no valid pixel.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[1.0, 2, 3], [np.nan, 4, 5]], dtype=np.float32)
    >>> aggregate_pieces([(a, 0, 0)], (1, 2), (2, 2), "average")
    array([[2.3333333, 4.       ]], dtype=float32)
    """
    ky, kx = (int(f) for f in factor)
    lead = tuple(out_shape[:-2])
    height, width = int(out_shape[-2]), int(out_shape[-1])
    n_lead = int(np.prod(lead, dtype=np.int64))
    if method == "mode":
        full = np.full((n_lead, height * ky, width * kx), np.nan, dtype=np.float64)
        for arr, row, col in pieces:
            a3 = _as3d(arr)
            full[:, row : row + a3.shape[1], col : col + a3.shape[2]] = a3
        out = np.empty((n_lead, height, width), dtype=np.float64)
        _mode_blocks(full, ky, kx, out)
        return out.astype(dtype, copy=False).reshape(out_shape)
    if method in ("sum", "average"):
        acc = np.zeros((n_lead, height, width), dtype=np.float64)
        kernel = _accumulate_sum
    elif method == "min":
        acc = np.full((n_lead, height, width), np.inf, dtype=np.float64)
        kernel = _accumulate_min
    elif method == "max":
        acc = np.full((n_lead, height, width), -np.inf, dtype=np.float64)
        kernel = _accumulate_max
    elif method == "bitwise_or":
        acc = np.zeros((n_lead, height, width), dtype=np.int64)
        kernel = _accumulate_or
    else:
        raise ValueError(f"unknown aggregation method {method!r}; expected one of {METHODS}")
    cnt = np.zeros((n_lead, height, width), dtype=np.int64)
    for arr, row, col in pieces:
        a3 = _as3d(arr)
        if a3.size:
            kernel(a3, int(row), int(col), ky, kx, acc, cnt)
    if method == "bitwise_or":
        acc = acc.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "average":
            acc /= cnt
    acc[cnt == 0] = np.nan
    return acc.astype(dtype, copy=False).reshape(out_shape)


def aggregate_blocks(
    a: np.ndarray,
    factor: tuple[int, int],
    method: str = "average",
    *,
    offset: tuple[int, int] = (0, 0),
    out_shape: tuple[int, int] | None = None,
    dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Aggregate a whole array over aligned ``ky × kx`` blocks.

    Parameters
    ----------
    a : numpy.ndarray
        Source of shape ``(..., ny, nx)``; NaN is nodata.
    factor : (ky, kx)
        Integer aggregation factors.
    method : {"average", "sum", "min", "max", "mode", "bitwise_or"}
        Reduction.
    offset : (row, col)
        Source pixel index of the output's top-left corner; negative or past-the-edge values
        give partial edge blocks aggregated from the pixels that exist.
    out_shape : (H, W), optional
        Output spatial shape; by default enough blocks to cover the source from ``offset``.
    dtype : numpy dtype
        Output dtype.

    Returns
    -------
    numpy.ndarray
        Shape ``(..., H, W)``.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.arange(15, dtype=np.float32).reshape(3, 5)
    >>> aggregate_blocks(a, (2, 2), "sum")
    array([[12., 20., 13.],
           [21., 25., 14.]], dtype=float32)
    >>> flags = np.array([[21824, 21824], [21824, 54596]], dtype=np.float32)
    >>> aggregate_blocks(flags, (2, 2), "bitwise_or")
    array([[54596.]], dtype=float32)
    """
    ky, kx = (int(f) for f in factor)
    ny, nx = a.shape[-2:]
    row0, col0 = (int(o) for o in offset)
    if out_shape is None:
        out_shape = (-(-(ny - row0) // ky), -(-(nx - col0) // kx))
    height, width = (int(s) for s in out_shape)
    # source window covered by the output, clipped to the source
    r0, r1 = max(row0, 0), min(row0 + height * ky, ny)
    c0, c1 = max(col0, 0), min(col0 + width * kx, nx)
    pieces = []
    if r1 > r0 and c1 > c0:
        pieces.append((a[..., r0:r1, c0:c1], r0 - row0, c0 - col0))
    return aggregate_pieces(pieces, (*a.shape[:-2], height, width), (ky, kx), method, dtype)
