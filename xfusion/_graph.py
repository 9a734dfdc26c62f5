"""Sparse tile-intersection graphs for grid changes onto large canvases.

A grid change (:func:`xfusion.resample`, :func:`xfusion.fuse`, :func:`xfusion.open_raster` onto a
grid) builds one task per output chunk that source data reach. Every other chunk is an alias of
one shared fill chunk per chunk shape (all NaN), so a 16 × 16 pixel cube placed on a global
0.001° grid (about a million 256² chunks) has a handful of tasks, and the graph is built in time
proportional to the chunks with data:

* :class:`SparseChunkLayer` is a Dask graph layer that holds the data tasks and generates the
  fill aliases on demand (nothing is stored per empty chunk; culling touches only the keys
  asked for);
* :func:`candidate_chunks` finds the output chunks the source's footprint (padded by the
  resampling kernel's reach) can touch, from the footprint polygon, without visiting the rest
  of the canvas;
* :func:`reproject_rois` computes, for many output chunks at once, the source window that
  :func:`odc.geo.overlap.compute_reproject_roi` gives for each of them, with the same
  floating-point operations (one vectorised PROJ call instead of one per chunk), so the warp of
  every chunk with data reads exactly the window it read before.

The graphs are written in Dask's task spec, imported here for every module of xfusion from
Dask's public modules: ``dask.task_spec`` (``Alias`` is public there since dask 2025.5) and
``dask.core.convert_legacy_graph``. On an older Dask (2024.12 to 2025.4) the same classes come
from ``dask._task_spec``, where they were defined first; :data:`PUBLIC_TASK_SPEC` says which
was taken, and ``tests/test_dask_api.py`` fails if a current Dask no longer offers the
public names.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dask.array
import numpy as np
import shapely
from affine import Affine
from dask.base import tokenize
from dask.core import convert_legacy_graph
from dask.highlevelgraph import HighLevelGraph, Layer, MaterializedLayer
from odc.geo import CRS
from odc.geo.geobox import GeoBox
from odc.geo.roi import roi_boundary

try:  # Dask's public task-spec module (Alias is public there since dask 2025.5)
    from dask.task_spec import Alias, DataNode, GraphNode, Task, TaskRef

    #: Whether the task-spec classes come from ``dask.task_spec`` (True) or, on a Dask older
    #: than 2025.5, from the private ``dask._task_spec`` that defines them (False).
    PUBLIC_TASK_SPEC = True
except ImportError:  # pragma: no cover - dask 2024.12 to 2025.4
    from dask._task_spec import Alias, DataNode, GraphNode, Task, TaskRef

    PUBLIC_TASK_SPEC = False

__all__ = [
    "PUBLIC_TASK_SPEC",
    "Alias",
    "DataNode",
    "GraphNode",
    "SparseChunkLayer",
    "Task",
    "TaskRef",
    "broadcast_leading",
    "candidate_chunks",
    "chunk_starts",
    "concatenate",
    "convert_legacy_graph",
    "data_blocks",
    "keep_blocks",
    "no_gc",
    "rechunk",
    "reproject_rois",
    "without_legacy_layers",
]

# output chunks whose source windows are computed in one vectorised call (bounds memory: about
# 16 points x 8 arrays of float64 per chunk)
_BATCH = 65536


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a graph is built.

    Building ~100,000 task objects (none of them in reference cycles) otherwise triggers
    repeated full collections that cost about twice the build itself.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def chunk_starts(chunks: Sequence[int]) -> np.ndarray:
    """Start offsets of the chunks along one axis, plus the total size at the end."""
    return np.concatenate(([0], np.cumsum(chunks, dtype=np.int64)))


class SparseChunkLayer(Layer):
    """Dask layer: explicit tasks for some chunks, a shared fill chunk for all the others.

    Parameters
    ----------
    name : str
        Name of the Dask array (keys are ``(name, *block_index)``).
    chunks : tuple of tuples of int
        Chunks of the array, as ``dask.array.Array.chunks``.
    dtype : numpy dtype
        Dtype of the fill chunks.
    tasks : mapping of key to task
        The chunks that hold data (Dask task-spec nodes keyed ``(name, *block_index)``).
    fill_value : float
        Value of every other chunk (NaN by default).

    Notes
    -----
    A chunk without a task is an alias of the key ``(name + "-fill", *shape)``, one task per
    distinct chunk shape that computes ``np.full(shape, fill_value, dtype)`` once; the aliases
    are generated when asked for, never stored, so building the layer costs nothing per empty
    chunk. A consumer must not write into a block in place (Dask's own rule): the fill block
    is shared.
    """

    def __init__(
        self,
        name: str,
        chunks: tuple[tuple[int, ...], ...],
        dtype: Any,
        tasks: Mapping[Any, GraphNode],
        fill_value: float = np.nan,
    ) -> None:
        super().__init__()
        self.name = name
        self.chunks = tuple(tuple(int(c) for c in axis) for axis in chunks)
        self.numblocks = tuple(len(axis) for axis in self.chunks)
        self.dtype = np.dtype(dtype)
        self.tasks = dict(tasks)
        self.fill_value = fill_value
        self.fill_name = f"{name}-fill"
        self._sizes = [sorted(set(axis)) for axis in self.chunks]

    # --- what a Layer must say about itself -----------------------------------------------------

    has_legacy_tasks = False

    def is_materialized(self) -> bool:
        return False

    def get_output_keys(self):
        return self.keys()

    def get_dependencies(self, key: Any, all_hlg_keys: Any) -> set:
        return set(self[key].dependencies)

    def __repr__(self) -> str:
        return (
            f"SparseChunkLayer<{self.name}: {len(self.tasks)} tasks, "
            f"{math.prod(self.numblocks)} chunks>"
        )

    # --- the mapping ----------------------------------------------------------------------------

    def _block(self, key: Any) -> tuple[int, ...] | None:
        """Block index of a chunk key of this array, or None."""
        if not isinstance(key, tuple) or len(key) != len(self.numblocks) + 1 or key[0] != self.name:
            return None
        idx = key[1:]
        for i, n in zip(idx, self.numblocks, strict=True):
            if not isinstance(i, int | np.integer) or not 0 <= i < n:
                return None
        return tuple(int(i) for i in idx)

    def _fill_shape(self, key: Any) -> tuple[int, ...] | None:
        if not isinstance(key, tuple) or len(key) != len(self.numblocks) + 1:
            return None
        if key[0] != self.fill_name:
            return None
        shape = key[1:]
        if all(s in sizes for s, sizes in zip(shape, self._sizes, strict=True)):
            return tuple(int(s) for s in shape)
        return None

    def fill_key(self, block: tuple[int, ...]) -> tuple:
        """Key of the shared fill chunk with the shape of block ``block``."""
        return (self.fill_name, *(axis[i] for axis, i in zip(self.chunks, block, strict=True)))

    def __getitem__(self, key: Any) -> GraphNode:
        try:
            return self.tasks[key]
        except (KeyError, TypeError):
            pass
        block = self._block(key)
        if block is not None:
            return Alias(key, self.fill_key(block))
        shape = self._fill_shape(key)
        if shape is not None:
            return Task(key, np.full, shape, self.fill_value, self.dtype)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        try:
            if key in self.tasks:
                return True
        except TypeError:
            return False
        return self._block(key) is not None or self._fill_shape(key) is not None

    def __iter__(self) -> Iterator:
        for shape in itertools.product(*self._sizes):
            yield (self.fill_name, *shape)
        for idx in itertools.product(*(range(n) for n in self.numblocks)):
            yield (self.name, *idx)

    def __len__(self) -> int:
        return math.prod(len(s) for s in self._sizes) + math.prod(self.numblocks)

    def cull(self, keys: set, all_hlg_keys: Any) -> tuple[Layer, dict]:
        """Keep the tasks of ``keys`` (and the fill chunks they alias), visiting only those keys."""
        out: dict = {}
        deps: dict = {}
        fills: set = set()
        for key in keys:
            if key in self.tasks:
                node = self.tasks[key]
            elif self._block(key) is not None:
                node = self[key]
                fills.add(node.target)
            else:
                continue
            out[key] = node
            deps[key] = set(node.dependencies)
        # the fill chunks last: HighLevelGraph.cull drops a layer's own keys from the keys it
        # asks the layers below for, in this order
        for key in fills:
            out[key] = self[key]
            deps[key] = set()
        return MaterializedLayer(out, annotations=self.annotations), deps


def without_legacy_layers(graph: HighLevelGraph) -> HighLevelGraph:
    """``graph`` with its materialised legacy-task layers converted to Dask's task spec.

    One legacy layer anywhere in a graph (``dask.array.from_array`` of a one-chunk array is
    one) makes Dask list every key of every layer when it culls, a million keys for a
    global canvas on every compute; converting the (small) input layers avoids that. The
    layers are replaced in this graph only, never in the input's own graph.
    """
    for name, layer in list(graph.layers.items()):
        if isinstance(layer, MaterializedLayer) and layer.has_legacy_tasks:
            # a legacy task names keys of its own layer and of the layers it depends on
            scope = [layer, *(graph.layers[d] for d in graph.dependencies.get(name, ()))]
            graph.layers[name] = MaterializedLayer(
                convert_legacy_graph(dict(layer), all_keys=_KeysOf(scope)),
                annotations=layer.annotations,
            )
    return graph


class _KeysOf:
    """The keys of some layers, as a container (nothing is listed)."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = layers

    def __contains__(self, key: object) -> bool:
        try:
            return any(key in layer for layer in self.layers)
        except TypeError:  # an unhashable literal inside a task is not a key
            return False


# --- which output chunks the source reaches --------------------------------------------------


def candidate_chunks(
    src: GeoBox,
    dst: GeoBox,
    ystarts: np.ndarray,
    xstarts: np.ndarray,
    pad: int,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Block indices ``(by, bx)`` of the output chunks the padded source footprint touches.

    The footprint is the source extent buffered by ``pad + 1`` source pixels, projected to
    ``dst``'s CRS (split at the antimeridian on a geographic grid) and then to ``dst``'s pixel
    plane; a chunk is a candidate when its pixel box intersects it. Returns ``None`` when the
    footprint cannot be trusted (a projection failure, a non-finite or empty footprint, or a
    source holding a pole on a geographic grid): the caller then considers every chunk.

    Parameters
    ----------
    src, dst : GeoBox
        Source and target grids.
    ystarts, xstarts : numpy.ndarray
        Chunk start offsets along ``y`` and ``x`` with the total size last
        (:func:`chunk_starts`).
    pad : int
        Reach of the resampling kernel, in source pixels.
    """
    poly = _footprint_pixels(src, dst, pad)
    if poly is None:
        return None
    if poly.is_empty:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    x0, y0, x1, y1 = poly.bounds
    by0 = max(int(np.searchsorted(ystarts, math.floor(y0), side="right")) - 1, 0)
    by1 = min(int(np.searchsorted(ystarts, math.ceil(y1), side="left")), len(ystarts) - 1)
    bx0 = max(int(np.searchsorted(xstarts, math.floor(x0), side="right")) - 1, 0)
    bx1 = min(int(np.searchsorted(xstarts, math.ceil(x1), side="left")), len(xstarts) - 1)
    if by1 <= by0 or bx1 <= bx0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    shapely.prepare(poly)
    found_y, found_x = [], []
    bys = np.arange(by0, by1)
    bxs = np.arange(bx0, bx1)
    # one row of chunks at a time: a vectorised test of its boxes against the footprint
    for by in bys:
        boxes = shapely.box(xstarts[bxs], ystarts[by], xstarts[bxs + 1], ystarts[by + 1])
        hit = shapely.intersects(poly, boxes)
        found_x.append(bxs[hit])
        found_y.append(np.full(int(hit.sum()), by, dtype=np.int64))
    return np.concatenate(found_y), np.concatenate(found_x)


def _footprint_pixels(src: GeoBox, dst: GeoBox, pad: int) -> Any:
    """Return the padded source footprint in ``dst``'s pixel plane (shapely), or None."""
    if _holds_pole(src, dst, pad):
        return None
    try:
        foot = src.footprint(dst.crs, buffer=pad + 1, wrapdateline=bool(dst.crs.geographic))
        inverse = ~dst.affine
        geom = shapely.transform(
            foot.geom,
            lambda xy: np.column_stack(inverse @ (xy[:, 0], xy[:, 1])),
        )
    except Exception:  # pyproj/shapely/GEOS raise several unrelated types
        return None
    if geom is None or not geom.is_valid:
        geom = shapely.make_valid(geom) if geom is not None else None
    if geom is None or (not geom.is_empty and not all(map(math.isfinite, geom.bounds))):
        return None
    return geom


def _holds_pole(src: GeoBox, dst: GeoBox, pad: int) -> bool:
    """Whether ``src`` (padded) holds a pole while ``dst`` is geographic (footprints break)."""
    if not dst.crs.geographic:
        return False
    try:
        to_src = CRS("EPSG:4326").transformer_to_crs(src.crs)
        xs, ys = to_src(np.array([0.0, 0.0]), np.array([90.0, -90.0]))
        cols, rows = (~src.affine) @ (np.asarray(xs), np.asarray(ys))
    except Exception:  # a pole outside the CRS's domain: not held
        return False
    ny, nx = src.shape.yx
    m = pad + 1
    inside = (
        np.isfinite(cols)
        & np.isfinite(rows)
        & (cols >= -m)
        & (cols <= nx + m)
        & (rows >= -m)
        & (rows <= ny + m)
    )
    return bool(inside.any())


# --- the source window of each output chunk --------------------------------------------------


def reproject_rois(
    src: GeoBox,
    dst: GeoBox,
    ystarts: np.ndarray,
    xstarts: np.ndarray,
    blocks_y: np.ndarray,
    blocks_x: np.ndarray,
    pad: int,
) -> np.ndarray:
    """Source windows of output chunks: ``compute_reproject_roi(src, chunk, padding=pad)``.

    Parameters
    ----------
    src, dst : GeoBox
        Source and target grids.
    ystarts, xstarts : numpy.ndarray
        Chunk start offsets of ``dst`` with the total size last (:func:`chunk_starts`).
    blocks_y, blocks_x : numpy.ndarray
        Block indices of the chunks.
    pad : int
        Padding in source pixels.

    Returns
    -------
    numpy.ndarray
        ``(n, 4)`` int64: ``row_start, row_stop, col_start, col_stop`` of each chunk's window
        (empty where ``stop <= start``), equal to ``compute_reproject_roi(src, dst[chunk],
        padding=pad).roi_src``: the same boundary points, the same affine arithmetic and the
        same PROJ transformation, done for many chunks at once.
    """
    out = np.zeros((len(blocks_y), 4), dtype=np.int64)
    for s in range(0, len(blocks_y), _BATCH):
        out[s : s + _BATCH] = _rois_batch(
            src, dst, ystarts, xstarts, blocks_y[s : s + _BATCH], blocks_x[s : s + _BATCH], pad
        )
    return out


def _coefs(a: Affine) -> tuple[float, ...]:
    return tuple(a)[:6]


# The affine library's arithmetic, written out on numpy arrays of coefficients (one element
# per chunk) with the same operations in the same order, so every result is bit for bit the
# one GeoBox slicing and odc-geo's point transforms compute one chunk at a time.


def _matmul(s: tuple, o: tuple) -> tuple:
    """``Affine @ Affine`` (``affine.Affine.__matmul__``)."""
    sa, sb, sc, sd, se, sf = s
    oa, ob, oc, od, oe, of = o
    return (
        sa * oa + sb * od,
        sa * ob + sb * oe,
        sa * oc + sb * of + sc,
        sd * oa + se * od,
        sd * ob + se * oe,
        sd * oc + se * of + sf,
    )


def _invert(s: tuple) -> tuple:
    """``~Affine`` (``affine.Affine.__invert__``)."""
    sa, sb, sc, sd, se, sf = s
    idet = 1.0 / (sa * se - sb * sd)
    ra = se * idet
    rb = -sb * idet
    rd = -sd * idet
    re = sa * idet
    return (ra, rb, -sc * ra - sf * rb, rd, re, -sc * rd - sf * re)


def _apply(coef: tuple, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Affine @ (x, y)`` (``x*a + y*b + c``, ``x*d + y*e + f``)."""
    a, b, c, d, e, f = coef
    return x * a + y * b + c, x * d + y * e + f


def _rois_batch(src, dst, ystarts, xstarts, blocks_y, blocks_x, pad) -> np.ndarray:
    n = len(blocks_y)
    if n == 0:
        return np.zeros((0, 4), dtype=np.int64)
    y0 = ystarts[blocks_y]
    x0 = xstarts[blocks_x]
    ny = ystarts[blocks_y + 1] - y0
    nx = xstarts[blocks_x + 1] - x0
    # each chunk's affine as GeoBox.__getitem__ computes it: dst.affine @ translation(x0, y0)
    one = np.ones(n)
    zero = np.zeros(n)
    chunk = _matmul(
        tuple(np.float64(v) for v in _coefs(dst.affine)),
        (one, zero, x0.astype(np.float64), zero, one, y0.astype(np.float64)),
    )
    chunk = tuple(np.asarray(v, dtype=np.float64)[:, None] for v in chunk)
    linear = src.crs == dst.crs
    pts_per_side = 2 if linear else 5
    # boundary points of a chunk depend only on its shape: one set per distinct shape
    shapes = np.stack([ny, nx], axis=1)
    uniq, inverse = np.unique(shapes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    per_shape = [roi_boundary(np.s_[0 : int(h), 0 : int(w)], pts_per_side) for h, w in uniq]
    npts = per_shape[0].shape[0]
    px = np.stack([p[:, 0] for p in per_shape])[inverse]  # (n, npts)
    py = np.stack([p[:, 1] for p in per_shape])[inverse]
    with np.errstate(all="ignore"):
        if linear:
            # LinearPointTransform(~(~chunk.transform * src.transform)) applied to the corners
            back = _invert(_matmul(_invert(chunk), _coefs(src.affine)))
            sx, sy = _apply(back, px, py)
        else:
            wx, wy = _apply(chunk, px, py)
            if dst.crs.geographic:
                wx = np.clip(wx, -180, 180)
                wy = np.clip(wy, -90, 90)
            transform = dst.crs.transformer_to_crs(src.crs)
            tx, ty = transform(wx.ravel(), wy.ravel())
            tx = np.asarray(tx, dtype=np.float64).reshape(n, npts)
            ty = np.asarray(ty, dtype=np.float64).reshape(n, npts)
            sx, sy = _apply(_coefs(~src.affine), tx, ty)
        # roi_from_points: the envelope of the finite points, floor/ceil, padded, clipped
        ok = np.isfinite(sx) & np.isfinite(sy)
        any_ok = ok.any(axis=1)
        xmin = np.where(ok, sx, np.inf).min(axis=1)
        ymin = np.where(ok, sy, np.inf).min(axis=1)
        xmax = np.where(ok, sx, -np.inf).max(axis=1)
        ymax = np.where(ok, sy, -np.inf).max(axis=1)
        c0 = np.floor(np.where(any_ok, xmin, 0)).astype("int32") - pad
        r0 = np.floor(np.where(any_ok, ymin, 0)).astype("int32") - pad
        c1 = np.ceil(np.where(any_ok, xmax, 0)).astype("int32") + pad
        r1 = np.ceil(np.where(any_ok, ymax, 0)).astype("int32") + pad
    sny, snx = src.shape.yx
    rois = np.stack(
        [np.clip(r0, 0, sny), np.clip(r1, 0, sny), np.clip(c0, 0, snx), np.clip(c1, 0, snx)],
        axis=1,
    ).astype(np.int64)
    rois[~any_ok] = 0
    return rois


# --- operations that keep a sparse array sparse ----------------------------------------------


def data_blocks(arr: dask.array.Array) -> list[tuple[int, ...]] | None:
    """Block indices of the chunks of ``arr`` that hold data, or None if all may."""
    layer = arr.dask.layers.get(arr.name)
    if isinstance(layer, SparseChunkLayer):
        return [key[1:] for key in layer.tasks]
    return None


def _all_blocks(arr: dask.array.Array) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(n) for n in arr.numblocks)))


def _sparse(name, chunks, dtype, tasks, dependencies, fill_value=np.nan) -> dask.array.Array:
    layer = SparseChunkLayer(name, chunks, dtype, tasks, fill_value)
    graph = without_legacy_layers(
        HighLevelGraph.from_collections(name, layer, dependencies=dependencies)
    )
    meta = np.empty((0,) * len(chunks), dtype)
    return dask.array.Array(graph, name, chunks=chunks, dtype=dtype, meta=meta)


def _paste(shape, dtype, fill_value, plan, *blocks):
    out = np.full(shape, fill_value, dtype)
    for blk, (src, dst) in zip(blocks, plan, strict=True):
        out[dst] = blk[src]
    return out


def rechunk(arr: dask.array.Array, chunks: tuple[tuple[int, ...], ...]) -> dask.array.Array:
    """``arr.rechunk(chunks)``, visiting only the chunks with data of a sparse array.

    A sparse array (made of a :class:`SparseChunkLayer`) gives a sparse array whose chunks
    with data are pasted from the input chunks with data they overlap (NaN elsewhere, as the
    input's fill chunks are); any other array goes through ``dask.array.rechunk``.
    """
    chunks = tuple(tuple(int(c) for c in axis) for axis in chunks)
    if arr.chunks == chunks:
        return arr
    blocks = data_blocks(arr)
    if blocks is None:
        return arr.rechunk(chunks)
    with no_gc():
        name = "xf-rechunk-" + tokenize(arr, chunks)
        bin_ = [chunk_starts(c).tolist() for c in arr.chunks]
        bout = [chunk_starts(c) for c in chunks]
        wanted: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        for idx in blocks:
            ranges = []
            for d, i in enumerate(idx):
                lo, hi = bin_[d][i], bin_[d][i + 1]
                first = int(np.searchsorted(bout[d], lo, side="right")) - 1
                last = int(np.searchsorted(bout[d], hi, side="left"))
                ranges.append(range(max(first, 0), last))
            for out_idx in itertools.product(*ranges):
                wanted.setdefault(out_idx, []).append(idx)
        layer = arr.dask.layers[arr.name]
        tasks = {}
        for out_idx, ins in wanted.items():
            starts = [int(bout[d][i]) for d, i in enumerate(out_idx)]
            shape = tuple(chunks[d][i] for d, i in enumerate(out_idx))
            plan, deps = [], []
            for idx in ins:
                src, dst = [], []
                for d, i in enumerate(idx):
                    lo = max(bin_[d][i], starts[d])
                    hi = min(bin_[d][i + 1], starts[d] + shape[d])
                    src.append(slice(lo - bin_[d][i], hi - bin_[d][i]))
                    dst.append(slice(lo - starts[d], hi - starts[d]))
                plan.append((tuple(src), tuple(dst)))
                deps.append(TaskRef((arr.name, *idx)))
            key = (name, *out_idx)
            tasks[key] = Task(key, _paste, shape, arr.dtype, layer.fill_value, tuple(plan), *deps)
        return _sparse(name, chunks, arr.dtype, tasks, (arr,), layer.fill_value)


def concatenate(arrays: Sequence[dask.array.Array], axis: int) -> dask.array.Array:
    """``dask.array.concatenate`` that stays sparse: aliases for the chunks with data only.

    The arrays must share their chunks on every other axis (see :func:`rechunk`). Every chunk
    of a non-sparse input is an alias (as many as it has chunks); the rest is NaN fill.
    """
    first = arrays[0]
    dtype = np.result_type(*(a.dtype for a in arrays))
    if any(a.dtype != dtype for a in arrays):
        arrays = [a.astype(dtype) for a in arrays]
    with no_gc():
        name = "xf-concatenate-" + tokenize(*arrays, axis)
        tasks = {}
        offset = 0
        for arr in arrays:
            blocks = data_blocks(arr)
            for idx in _all_blocks(arr) if blocks is None else blocks:
                new = (*idx[:axis], idx[axis] + offset, *idx[axis + 1 :])
                key = (name, *new)
                tasks[key] = Alias(key, (arr.name, *idx))
            offset += arr.numblocks[axis]
        chunks = tuple(
            tuple(c for a in arrays for c in a.chunks[axis]) if d == axis else first.chunks[d]
            for d in range(first.ndim)
        )
        return _sparse(name, chunks, dtype, tasks, tuple(arrays))


def broadcast_leading(arr: dask.array.Array, size: int) -> dask.array.Array:
    """``arr`` repeated along a new first axis of ``size`` (one chunk), staying sparse.

    Like ``dask.array.broadcast_to``: each chunk with data is a read-only broadcast view.
    """
    blocks = data_blocks(arr)
    if blocks is None:
        return dask.array.broadcast_to(arr, (size, *arr.shape), chunks=((size,), *arr.chunks))
    with no_gc():
        name = "xf-broadcast-" + tokenize(arr, size)
        tasks = {}
        for idx in blocks:
            key = (name, 0, *idx)
            shape = (size, *(c[i] for c, i in zip(arr.chunks, idx, strict=True)))
            tasks[key] = Task(key, np.broadcast_to, TaskRef((arr.name, *idx)), shape)
        chunks = ((size,), *arr.chunks)
        fill = arr.dask.layers[arr.name].fill_value
        return _sparse(name, chunks, arr.dtype, tasks, (arr,), fill)


def keep_blocks(arr: dask.array.Array, blocks_yx: set[tuple[int, int]]) -> dask.array.Array:
    """``arr`` with only the spatial chunks ``blocks_yx`` (every leading block) kept as tasks.

    The other chunks become the shared all-NaN fill chunk: for arrays known to be NaN there
    (e.g. a cube read from files that do not reach those chunks), so culling and computing
    visit only the chunks with data.
    """
    with no_gc():
        name = "xf-sparse-" + tokenize(arr, sorted(blocks_yx))
        tasks = {}
        for lead in itertools.product(*(range(n) for n in arr.numblocks[:-2])):
            for by, bx in blocks_yx:
                key = (name, *lead, by, bx)
                tasks[key] = Alias(key, (arr.name, *lead, by, bx))
        return _sparse(name, arr.chunks, arr.dtype, tasks, (arr,))
