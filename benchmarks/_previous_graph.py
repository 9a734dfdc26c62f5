"""The graph builders of xfusion 0.x before sparse graphs (one task per output chunk).

Kept verbatim as the "previous approach" the ``graph`` benchmark times against, and as the
reference the sparse graphs must equal value for value (``tests/test_sparse_graph.py``). Not
part of the library.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import dask.array
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from odc.geo.geobox import GeoBox
from odc.geo.overlap import compute_reproject_roi

from xfusion._kernels.aggregate import aggregate_pieces
from xfusion.preprocess.resample import _PADDING, _warp_block

__all__ = ["aggregate_dask_dense", "warp_dask_dense"]


def _warp_task(src, dst, method, window_shape, plan, *blocks):
    window = np.empty((*blocks[0].shape[:-2], *window_shape), dtype=blocks[0].dtype)
    for blk, (ys, xs, wy, wx) in zip(blocks, plan, strict=True):
        window[..., wy, wx] = blk[..., ys, xs]
    return _warp_block(window, src, dst, method)


def warp_dask_dense(
    data: dask.array.Array, src: GeoBox, dst: GeoBox, method: str, chunks: tuple[int, int]
) -> dask.array.Array:
    """Tile-intersection graph: each output chunk warps the padded source window it needs.

    Unlike a plain footprint intersection, the source window is padded by the interpolation
    kernel's reach, so chunked results equal the whole-array warp at chunk edges.
    """
    pad = _PADDING[method]
    ybounds = np.cumsum((0, *data.chunks[-2]))
    xbounds = np.cumsum((0, *data.chunks[-1]))
    ychunks = tuple(min(chunks[0], dst.shape[0] - s) for s in range(0, dst.shape[0], chunks[0]))
    xchunks = tuple(min(chunks[1], dst.shape[1] - s) for s in range(0, dst.shape[1], chunks[1]))
    lead_chunks = data.chunks[:-2]
    dtype = data.dtype
    name = "xf-warp-dense-" + tokenize(data, src, dst, method, chunks)
    keys = data.__dask_keys__()

    def src_key(idx: tuple[int, ...]) -> Any:
        k = keys
        for i in idx:
            k = k[i]
        return k

    def overlapping(bounds: np.ndarray, lo: int, hi: int) -> list[tuple[int, slice, slice]]:
        found = []
        for b in range(len(bounds) - 1):
            b0, b1 = int(bounds[b]), int(bounds[b + 1])
            p0, p1 = max(lo, b0), min(hi, b1)
            if p1 > p0:
                found.append((b, slice(p0 - b0, p1 - b0), slice(p0 - lo, p1 - lo)))
        return found

    dsk: dict[Any, Any] = {}
    y0 = 0
    for by, ny in enumerate(ychunks):
        x0 = 0
        for bx, nx in enumerate(xchunks):
            dst_chunk = dst[y0 : y0 + ny, x0 : x0 + nx]
            roi = compute_reproject_roi(src, dst_chunk, padding=pad).roi_src
            rys, rxs = roi
            yparts = overlapping(ybounds, rys.start, rys.stop) if rys.stop > rys.start else []
            xparts = overlapping(xbounds, rxs.start, rxs.stop) if rxs.stop > rxs.start else []
            for lead_idx in np.ndindex(*(len(c) for c in lead_chunks)):
                lead_shape = tuple(c[i] for c, i in zip(lead_chunks, lead_idx, strict=True))
                key = (name, *lead_idx, by, bx)
                if not (yparts and xparts):
                    dsk[key] = (np.full, (*lead_shape, ny, nx), np.nan, dtype)
                    continue
                plan, deps = [], []
                for iy, ys, wy in yparts:
                    for ix, xs, wx in xparts:
                        plan.append((ys, xs, wy, wx))
                        deps.append(src_key((*lead_idx, iy, ix)))
                window_shape = (rys.stop - rys.start, rxs.stop - rxs.start)
                task = partial(_warp_task, src[roi], dst_chunk, method, window_shape, tuple(plan))
                dsk[key] = (task, *deps)
            x0 += nx
        y0 += ny
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=(data,))
    return dask.array.Array(
        graph,
        name,
        chunks=(*lead_chunks, ychunks, xchunks),
        dtype=dtype,
        meta=np.empty((0,) * data.ndim, dtype),
    )


def _aggregate_task(plan, out_shape, factor, method, dtype, *blocks):
    pieces = [
        (blk[..., ys, xs], row, col) for blk, (ys, xs, row, col) in zip(blocks, plan, strict=True)
    ]
    return aggregate_pieces(pieces, out_shape, factor, method, dtype)


def _axis_plan(
    src_chunks: tuple[int, ...], k: int, offset: int, out_size: int, out_chunk: int
) -> tuple[tuple[int, ...], list[list[tuple[int, slice, int]]]]:
    """For each output chunk along an axis: (input chunk index, slice in it, offset in block)."""
    bounds = np.cumsum((0, *src_chunks))
    n = int(bounds[-1])
    out_chunks = tuple(min(out_chunk, out_size - s) for s in range(0, out_size, out_chunk))
    plans = []
    start = 0
    for size in out_chunks:
        lo = offset + start * k  # source index of the output block's first pixel
        s0, s1 = max(lo, 0), min(lo + size * k, n)
        plan = []
        if s1 > s0:
            first = int(np.searchsorted(bounds, s0, side="right")) - 1
            for b in range(first, len(src_chunks)):
                b0, b1 = int(bounds[b]), int(bounds[b + 1])
                if b0 >= s1:
                    break
                p0, p1 = max(s0, b0), min(s1, b1)
                if p1 > p0:
                    plan.append((b, slice(p0 - b0, p1 - b0), p0 - lo))
        plans.append(plan)
        start += size
    return out_chunks, plans


def aggregate_dask_dense(
    data: dask.array.Array,
    factor: tuple[int, int],
    offset: tuple[int, int],
    out_yx: tuple[int, int],
    method: str,
    chunks: tuple[int, int],
) -> dask.array.Array:
    ky, kx = factor
    dtype = data.dtype
    ychunks, yplans = _axis_plan(data.chunks[-2], ky, offset[0], out_yx[0], chunks[0])
    xchunks, xplans = _axis_plan(data.chunks[-1], kx, offset[1], out_yx[1], chunks[1])
    lead_chunks = data.chunks[:-2]
    name = "xf-aggregate-dense-" + tokenize(data, factor, offset, out_yx, method, chunks)
    keys = data.__dask_keys__()

    def src_key(idx: tuple[int, ...]) -> Any:
        k = keys
        for i in idx:
            k = k[i]
        return k

    dsk: dict[Any, Any] = {}
    for lead_idx in np.ndindex(*(len(c) for c in lead_chunks)):
        lead_shape = tuple(c[i] for c, i in zip(lead_chunks, lead_idx, strict=True))
        for by, yplan in enumerate(yplans):
            for bx, xplan in enumerate(xplans):
                out_shape = (*lead_shape, ychunks[by], xchunks[bx])
                plan, deps = [], []
                for iy, ys, row in yplan:
                    for ix, xs, col in xplan:
                        plan.append((ys, xs, row, col))
                        deps.append(src_key((*lead_idx, iy, ix)))
                key = (name, *lead_idx, by, bx)
                if deps:
                    task = partial(_aggregate_task, tuple(plan), out_shape, factor, method, dtype)
                    dsk[key] = (task, *deps)
                else:
                    dsk[key] = (np.full, out_shape, np.nan, dtype)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=(data,))
    return dask.array.Array(
        graph,
        name,
        chunks=(*lead_chunks, ychunks, xchunks),
        dtype=dtype,
        meta=np.empty((0,) * data.ndim, dtype),
    )
