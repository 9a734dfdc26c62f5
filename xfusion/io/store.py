"""Resumable Zarr stores that are complete under their name, or absent.

:func:`write_zarr` writes lazy cubes region by region into ``<path>.partial``, records each
finished region in a progress file, and renames the store into place only when every region
is written; :func:`store_is_complete` tells a finished store from a partial one. Writing region
by region also bounds memory (see ``region_chunks``); the blocks a halo reaches into across a
region edge are kept for the next region rather than computed again (see ``cache_mb``).
:func:`open_zarr` reads such a store back: one lazy cube per group, with its coordinates (grid,
CRS, band metadata) as written.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from dask.array.core import concatenate3
from dask.sizeof import sizeof

from xfusion._graph import DataNode, convert_legacy_graph
from xfusion._json import jsonable
from xfusion.errors import ConfigError, InputError, MissingFileError, SourceError
from xfusion.validate import normalize_chunks

__all__ = [
    "COMPLETE_ATTR",
    "PROGRESS_FILE",
    "check_resumable",
    "open_zarr",
    "store_is_complete",
    "write_zarr",
]

log = logging.getLogger(__name__)

#: Inside a partial Zarr store: the regions written so far (JSON).
PROGRESS_FILE = ".xfusion-progress.json"
#: Attribute of the root group of a finished Zarr store, set once every region is written.
COMPLETE_ATTR = "xfusion_complete"
_STORE_FORMAT = 1


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _partial_path(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def store_is_complete(path: str | os.PathLike[str]) -> bool:
    """Return whether ``path`` is a Zarr store that :func:`write_zarr` finished.

    A store being written (``outputs.zarr.partial``), or one left by an interrupted run, is
    never complete.

    Examples
    --------
    >>> store_is_complete("no-such-store.zarr")
    False
    """
    return _completed_digest(Path(path)) is not None


def write_zarr(
    cubes: Mapping[str, xr.DataArray],
    path: str | os.PathLike[str],
    *,
    resume: bool = False,
    fingerprint: Mapping[str, Any] | None = None,
    chunks: Any = None,
    region_chunks: Mapping[str, int] | None = None,
    cache_mb: float = 512,
) -> Path:
    """Write ``cubes`` as one Zarr store, one group per cube; resumable, and complete or absent.

    The store is written into ``<path>.partial``: the metadata of every cube first, then the
    data one region at a time (by default a slab of one chunk row along ``y``, or along the
    first dimension of a cube without ``y``; see ``region_chunks``) in order, each recorded,
    once written, in the partial store's ``.xfusion-progress.json``. When all regions are
    written the root group gets an ``xfusion_complete`` attribute, the metadata is
    consolidated and the store is renamed to ``path`` (replacing an older store there), so
    ``path`` only ever holds a complete store.
    If writing fails or is killed, the partial store stays behind.

    This function computes: it computes the cubes on the current Dask scheduler. A cube's task
    graph is optimised once. On Dask's local threaded (or synchronous) scheduler its regions
    stream through one pass: tasks run in region order, the tasks that read or generate data
    at most one output chunk per thread ahead of the first chunk not yet computed, and each
    region is written (on a worker thread, in order) as soon as its chunks are computed, while
    the next ones compute, so no region waits for the slowest task of the one before. On other
    schedulers (a ``distributed`` client) each region runs the part of the graph its blocks
    need. Either way a result that a later region needs too (within ``cache_mb``) is computed
    once. If a task fails, the regions before the first one that needs it are still written
    (and recorded) before the error is raised, so a resumed write starts there.

    Parameters
    ----------
    cubes : mapping of str to xarray.DataArray
        The cubes, by group name: at least one. A group name is a non-empty string without
        ``/``, backslash or NUL, does not start with ``.`` (so not ``.`` or ``..``) and is not
        the name of one of the cube's own dimensions or coordinates (the cube is stored as a
        variable of that name next to its coordinates). Each cube is renamed to its group name.
    path : path-like
        The store to write (``.zarr``).
    resume : bool
        Continue a partial store left by an interrupted call with the same ``fingerprint`` and
        the same cubes' names, dimensions, shapes, chunks, dtypes, coordinates and attributes:
        its finished regions are not written again. A partial store that does not match raises
        :class:`~xfusion.errors.ConfigError` saying why. Without ``resume`` a partial store is
        discarded. With ``resume``, a complete store at ``path`` that matches is kept as is.
        A complete store at ``path`` is replaced only once the new one is complete; anything
        else at ``path`` (a file, another program's store) is refused with
        :class:`~xfusion.errors.ConfigError` and left untouched.
    fingerprint : mapping, optional
        JSON-able values identifying what produced the cubes (a recipe passes
        :meth:`RecipeConfig.fingerprint`).
    chunks : int, tuple or mapping of str to int, optional
        Chunk sizes of the store, in the grammar of :func:`xfusion.validate.normalize_chunks`
        (an int for ``y`` and ``x``, ``(y, x)``, a mapping by dimension name; ``-1`` or None
        for a whole dimension), for cubes held in memory; cubes backed by Dask keep their
        chunks unless given here. A dimension applies to the cubes that have it; one that no
        cube has is refused. Default: in-memory cubes are one chunk.
    region_chunks : mapping of str to int, optional
        How many chunks a region spans along each named dimension, e.g. ``{"y": 4, "x": 4}``
        (dimensions not named are written whole). Peak memory follows the region, not the
        cube: Dask's local scheduler computes the inputs of a whole graph greedily, so a lazy
        prediction with a halo written in one go holds a growing share of the cube's input
        blocks, while a region holds its own blocks and the neighbours its halo reaches into.
        Default ``{"y": 1}``.
    cache_mb : float
        Memory (MiB) for task results that a later region needs again, chiefly the input
        blocks a halo reaches into across a region's edge: they are kept from the region that
        computed them instead of being computed again. The regions of a cube are written in
        order (row by row with the default ``region_chunks``), so what is kept is about one
        row of blocks along the region edges (a slice that a halo takes from a block is kept
        as a copy, not with its block); when that exceeds ``cache_mb``, the results needed
        soonest are kept and the others recomputed. ``0`` keeps nothing: each region
        is computed on its own and recomputes the blocks its halo reaches into (for
        ``k × k`` chunk regions, ``(k + 2)² / k²`` times the input reads). On a
        ``distributed`` client the kept results stay on the workers (as futures). Default 512.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InputError
        ``cubes`` is empty or not a mapping, a value is not a DataArray, a group name breaks
        the rules above, ``chunks`` breaks the grammar of ``chunks=``, or ``region_chunks`` or
        ``cache_mb`` is not a positive number; raised before anything is written.
    ConfigError
        ``path`` holds something other than an xfusion store, or ``resume`` meets a partial
        store of another origin.

    See Also
    --------
    open_zarr : read the store back, one lazy cube per group.

    Examples
    --------
    >>> import tempfile, numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.arange(12.0).reshape(4, 3), dims=("y", "x"))
    >>> store = write_zarr({"a": cube}, tempfile.mkdtemp() + "/out.zarr", chunks={"y": 2})
    >>> store_is_complete(store)
    True
    >>> open_zarr(store, "a").values.tolist()[1]
    [3.0, 4.0, 5.0]

    Each cube is a group of the store, so ``xr.open_zarr(store)`` (the root group) shows no
    variables; open one with ``xr.open_zarr(store, group="a")`` or all with :func:`open_zarr`.
    """
    _check_cubes(cubes)
    _cache_budget(cache_mb)
    every_dim = [str(d) for cube in cubes.values() for d in cube.dims]
    dims = [d for d in dict.fromkeys(every_dim) if d not in ("y", "x")]
    dims += [d for d in ("y", "x") if d in every_dim]  # so (y, x) reads as it does elsewhere
    sizes = normalize_chunks(chunks, dims, "write_zarr chunks")
    final = Path(path)
    partial = _partial_path(final)
    if (final.exists() or final.is_symlink()) and _completed_digest(final) is None:
        raise ConfigError(
            f"{str(final)!r} exists and is not a Zarr store written by xfusion.write_zarr; "
            "expected a new path or an earlier xfusion output (remove it or choose another path)"
        )
    datasets = {name: _zarr_dataset(name, cube, sizes) for name, cube in cubes.items()}
    identity = {
        "format": _STORE_FORMAT,
        "fingerprint": jsonable(dict(fingerprint or {})),
        "schema": _schema(datasets),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    regions = _zarr_regions(datasets, region_chunks)
    if resume and _completed_digest(final) == digest:
        log.info("%s is already complete for this configuration", final)
        return final
    if resume and _completed_digest(partial) == digest:  # stopped just before the rename
        _replace_dir(partial, final)
        return final
    done: set[str] = set()
    progress = _read_progress(partial)
    if partial.exists() and resume and progress is not None:
        if progress.get("digest") != digest:
            raise ConfigError(_cannot_resume(partial, _difference(progress, identity)))
        done = set(progress.get("regions", [])) & {r[0] for r in regions}
        log.info("resuming %s: %d of %d regions already written", final, len(done), len(regions))
    else:
        if partial.exists():
            log.info("discarding the partial store %s", partial)
            shutil.rmtree(partial)
        for i, (name, ds) in enumerate(datasets.items()):
            # metadata and coordinates only: the data variable is lazy and not computed here
            ds.to_zarr(
                partial,
                group=name,
                mode="w" if i == 0 else "a",
                compute=False,
                zarr_format=2,
                consolidated=False,
            )
    record = {**identity, "digest": digest, "n_regions": len(regions)}
    _write_progress(partial, {**record, "regions": [r[0] for r in regions if r[0] in done]})
    budget = _cache_budget(cache_mb)
    for name, ds in datasets.items():
        todo = [(key, where) for key, cube, where in regions if cube == name and key not in done]
        if not todo:
            continue
        data = ds[name]

        def write(i: int, values: Any, name: str = name, data=data, todo=todo) -> None:
            where = todo[i][1]
            piece = xr.DataArray(values, dims=data.dims, attrs=data.attrs).to_dataset(name=name)
            piece.to_zarr(
                partial,
                group=name,
                mode="r+",
                region=dict(where) if where else None,
                zarr_format=2,
                consolidated=False,
            )

        def finished(i: int, todo: list = todo) -> None:  # in this thread, in region order
            done.add(todo[i][0])
            regions_done = [r[0] for r in regions if r[0] in done]
            _write_progress(partial, {**record, "regions": regions_done})

        _write_regions(data, [where for _, where in todo], budget, write, finished)
    _finish_store(partial, final, digest, len(regions), list(datasets))
    return final


def _cache_budget(cache_mb: Any) -> int:
    if (
        isinstance(cache_mb, bool)
        or not isinstance(cache_mb, int | float | np.integer | np.floating)
        or not cache_mb >= 0
        or not np.isfinite(cache_mb)
    ):
        raise InputError(
            f"cache_mb must be a number of MiB >= 0 (0 recomputes shared blocks); got {cache_mb!r}"
        )
    return int(cache_mb * 2**20)


def _write_regions(
    data: xr.DataArray,
    wheres: list[Mapping[str, slice]],
    budget: int,
    write: Any,
    finished: Any,
) -> None:
    """Compute ``data`` over each region, ``write(i, values)`` it and call ``finished(i)``.

    ``finished`` is called in this thread, in region order, each time after its region's
    ``write`` returned; a region is written only once every region before it is. On Dask's
    local threaded or synchronous scheduler with a ``budget`` of bytes the regions stream
    through one pipeline (:class:`_Pipeline`); on another scheduler (a ``distributed`` client)
    they share one task graph region by region (:class:`_SharedTasks`); without a budget each
    region is computed on its own.
    """
    if budget > 0 and data.chunks is not None:
        ranges = [_block_ranges(data, w) for w in wheres]
        workers = _local_workers(data.data)
        if workers is not None:
            pipeline = _Pipeline(data.data, ranges, budget, workers)
            if pipeline.closed:
                pipeline.run(write, finished)
                return
        shared = _SharedTasks(data.data, ranges, budget)
        if shared.closed:
            for i, values in enumerate(shared):
                write(i, values)
                del values  # not held while the next region computes
                finished(i)
            return
    for i, where in enumerate(wheres):
        piece = data.isel(where) if where else data
        values = piece.data.compute()  # xf: computes one region of the store being written
        write(i, values)
        del values
        finished(i)


def _local_workers(array: Any) -> int | None:
    """Threads of Dask's local scheduler that would compute ``array``: None for another one.

    The threaded scheduler's ``num_workers`` (or its configured ``pool``'s size, or one per
    core); 1 for the synchronous scheduler.
    """
    import dask.local
    import dask.threaded
    from dask.base import get_scheduler

    schedule = get_scheduler(collections=[array])
    if schedule is dask.local.get_sync:
        return 1
    if schedule is not dask.threaded.get:
        return None
    pool = dask.config.get("pool", None)
    if pool is not None:
        return None  # a pool of the user's own: dask.threaded.get schedules on it
    workers = dask.config.get("num_workers", None)
    return int(workers) if workers else int(dask.system.CPU_COUNT)


def _distributed_client(schedule: Any) -> Any:
    """Return the ``distributed.Client`` whose ``get`` is ``schedule``, or None."""
    client = getattr(schedule, "__self__", None)
    module = type(client).__module__
    return client if module.startswith("distributed") and hasattr(client, "gather") else None


def _block_ranges(data: xr.DataArray, where: Mapping[str, slice]) -> list[range]:
    """Return the chunk indices a region spans along each dimension (it follows chunk edges)."""
    ranges = []
    for dim, sizes in zip(data.dims, data.chunks or (), strict=True):
        if dim in where:
            bounds = np.cumsum((0, *sizes))
            span = where[dim]
            ranges.append(range(*np.searchsorted(bounds, [span.start, span.stop]).tolist()))
        else:
            ranges.append(range(len(sizes)))
    return ranges


class _Task:
    """One computation of a task of :class:`_Pipeline`'s graph (a task may be computed again)."""

    __slots__ = (
        "again",
        "deps",
        "first",
        "key",
        "missing",
        "order",
        "output",
        "redo",
        "size",
        "state",
        "waiters",
    )

    def __init__(self, key: Any, first: int, order: int) -> None:
        self.key = key
        self.first = first  # position of the first output chunk that needs it
        self.order = order  # depth-first position: the order one thread would compute it in
        self.deps: dict[Any, _Task] = {}  # the graph's dependency key -> its computation
        self.waiters: set[_Task] = set()  # computations not yet started that need this one
        self.missing = 0  # dependencies not yet in memory
        self.state = "waiting"  # waiting, ready, running, memory, released or dropped
        self.output: int | None = None  # position among the output chunks
        self.size = 0  # bytes held (0 for a result that is one of its inputs)
        self.again: _Task | None = None  # the computation that replaced a dropped one
        self.redo = False  # computes a dropped result again: never ahead of the lookahead


class _Pipeline:
    """Stream the regions of one Dask array through Dask's local scheduler, in order.

    One pass over the array's optimised graph instead of one computation per region, so no
    region waits for the slowest task of the one before (the pipeline runs on while a region
    is assembled and written), with the memory of a region-by-region computation:

    * tasks run on ``workers`` threads, the task a single thread would compute next first
      (depth-first from the output chunks, region by region in order);
    * a task that depends on nothing (it reads or generates data) starts at most ``lookahead``
      output chunks ahead of the first output chunk not yet computed; tasks built on results at
      hand run as soon as they can (so a halo's slices are taken and the block they come from
      released);
    * a result is released once nothing that still has to run needs it (a small slice of a
      larger array is copied first, so the array behind it can go); what waits for a later
      output chunk beyond the lookahead (the blocks a halo reaches into across a region's
      edge) is kept within ``budget`` bytes, the results needed soonest first; the others are
      dropped and computed again when needed;
    * each region is written (``write``, on a worker thread, one region at a time and in order)
      as soon as its chunks are computed, and ``finished`` is called for it in this thread.

    If a task fails, the regions before the first region that needs it are still computed and
    written (as region-by-region computation would have), then the error is raised. Dask's
    local callbacks (progress bars, :mod:`xfusion._kernels.threadpool`'s BLAS limit) see the
    pass as one computation.
    """

    def __init__(self, array: Any, regions: list[list[range]], budget: int, workers: int) -> None:
        (optimized,) = dask.optimize(array)
        self.name = optimized.name
        self.graph = convert_legacy_graph(dict(optimized.__dask_graph__()))
        self.regions = [
            [(self.name, *index) for index in itertools.product(*ranges)] for ranges in regions
        ]
        outputs = [key for keys in self.regions for key in keys]
        self.closed = all(key in self.graph for key in outputs) and all(
            dep in self.graph for node in self.graph.values() for dep in node.dependencies
        )
        self.budget = budget
        self.workers = max(1, int(workers))
        self.lookahead = self.workers
        if self.closed:
            self.tasks = self._plan(outputs)

    def _plan(self, outputs: list[Any]) -> dict[Any, _Task]:
        """One computation per task the outputs need, in depth-first order from the outputs."""
        tasks: dict[Any, _Task] = {}
        entered: set[Any] = set()
        for position, out in enumerate(outputs):
            stack = [out]
            while stack:
                key = stack[-1]
                if key in tasks:
                    stack.pop()
                elif key not in entered:
                    entered.add(key)
                    stack.extend(d for d in self.graph[key].dependencies if d not in tasks)
                else:
                    stack.pop()
                    tasks[key] = _Task(key, position, len(tasks))
            tasks[out].output = position
        for task in tasks.values():
            for dep in self.graph[task.key].dependencies:
                task.deps[dep] = tasks[dep]
                tasks[dep].waiters.add(task)
            task.missing = len(task.deps)
        return tasks

    def run(self, write: Any, finished: Any) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        from dask.callbacks import local_callbacks, unpack_callbacks

        outputs = [key for keys in self.regions for key in keys]
        starts = np.cumsum([0] + [len(keys) for keys in self.regions]).tolist()
        region_of = [r for r, keys in enumerate(self.regions) for _ in keys]
        values: dict[_Task, Any] = {}
        computed = [False] * len(outputs)
        # (0 for a task that runs ahead else 1, first, order, ticket, task)
        ready: list[tuple[int, int, int, int, _Task]] = []
        parked: list[tuple[int, int, int, _Task]] = []  # beyond the lookahead: (first, ...)
        tickets = itertools.count()
        state = {
            "waiting": {t.key for t in self.tasks.values()},
            "ready": [],
            "running": set(),
            "finished": set(),
            "cache": {},
        }
        dsk = {key: self.graph[key] for key in self.tasks}
        frontier = 0  # the first output chunk not yet computed
        cut = len(outputs)  # after an error: no task for this output chunk or later
        errors: list[tuple[int, BaseException]] = []
        running: dict[Any, Any] = {}  # future -> task, or region index for a write
        next_write = 0
        held = 0  # bytes of results in memory (outputs excepted)

        def pending_output(task: _Task) -> bool:  # an output chunk not yet written
            return task.output is not None and region_of[task.output] >= next_write

        def make_ready(task: _Task) -> None:
            task.state = "ready"
            priority = 0 if ahead(task) else 1
            heapq.heappush(ready, (priority, task.first, task.order, next(tickets), task))

        def ahead(task: _Task) -> bool:
            """Whether ``task`` is beyond the lookahead but built on results of tasks within.

            Such a task (a slice that a later halo takes from a block) runs first, so that
            what is kept for later is its result rather than the larger one it is built on.
            """
            horizon = frontier + self.lookahead
            return (
                task.first > horizon
                and not task.redo
                and bool(task.deps)
                and all(dep.first <= horizon for dep in task.deps.values())
            )

        def release(task: _Task) -> None:
            nonlocal held
            values.pop(task, None)
            held -= task.size
            task.size = 0
            task.state = "released"

        def again(task: _Task, first: int) -> _Task:
            """Compute ``task``'s key again, from what is at hand or computed again in turn."""
            new = _Task(task.key, first, task.order)
            new.redo = True
            for key, dep in task.deps.items():
                while dep.state == "dropped" and dep.again is not None:
                    dep = dep.again
                if dep.state in ("released", "dropped"):
                    dep = again(dep, first)
                else:
                    sooner(dep, first)
                new.deps[key] = dep
                dep.waiters.add(new)
                new.missing += dep.state != "memory"
            if not new.missing:
                make_ready(new)
            return new

        def sooner(task: _Task, first: int) -> None:
            """Let a task not yet started (and what it waits for) run for an earlier output."""
            todo = [task]
            while todo:
                task = todo.pop()
                if task.first <= first or task.state not in ("waiting", "ready", "parked"):
                    continue
                task.first = first
                if task.state == "parked":
                    make_ready(task)  # the lookahead is measured from its new first
                todo.extend(task.deps.values())

        def drop(task: _Task) -> None:
            """Forget a kept result; whatever still needs it computes it again."""
            waiters = task.waiters
            release(task)
            task.state, task.waiters = "dropped", set()
            new = task.again = again(task, min(w.first for w in waiters))
            for waiter in waiters:
                waiter.deps[task.key] = new
                new.waiters.add(waiter)
                waiter.missing += 1
                waiter.state = "waiting"  # its place among the ready tasks is void

        def within_budget() -> None:
            horizon = frontier + self.lookahead
            kept = []
            for task in values:
                if task.output is None and task.waiters:
                    soonest = min(w.first for w in task.waiters)
                    if soonest > horizon:
                        kept.append((soonest, task.order, task))
            used = sum(t.size for _, _, t in kept)
            for _, _, task in sorted(kept, key=lambda k: k[:2], reverse=True):
                if used <= self.budget:
                    break
                used -= task.size
                drop(task)

        def submit_tasks(pool: Any) -> None:
            while parked and parked[0][0] <= frontier + self.lookahead:
                task = heapq.heappop(parked)[3]
                if task.state == "parked":  # else its input was dropped: it waits again
                    make_ready(task)
            busy = sum(not isinstance(v, int) for v in running.values())
            while ready and busy < self.workers:
                task = heapq.heappop(ready)[-1]
                first = task.first  # may have come sooner since it was pushed
                if task.state != "ready" or task.missing or first >= cut:
                    continue  # dropped inputs made it wait again, or after an error
                if first > frontier + self.lookahead and not ahead(task):
                    heapq.heappush(parked, (first, task.order, next(tickets), task))
                    task.state = "parked"
                    continue
                args = {key: values[dep] for key, dep in task.deps.items()}
                task.state = "running"
                for dep in task.deps.values():
                    dep.waiters.discard(task)
                    if not dep.waiters and dep.state == "memory" and not pending_output(dep):
                        release(dep)
                state["waiting"].discard(task.key)
                state["running"].add(task.key)
                for callback in pretask:
                    callback(task.key, dsk, state)
                running[pool.submit(self.graph[task.key], args)] = task
                busy += 1

        def submit_write(pool: Any) -> None:
            nonlocal next_write
            if next_write >= len(self.regions) or any(isinstance(v, int) for v in running.values()):
                return
            r = next_write
            if starts[r + 1] > cut or not all(computed[starts[r] : starts[r + 1]]):
                return
            blocks = {t.key: values[t] for t in (self.tasks[k] for k in self.regions[r])}
            running[pool.submit(write, r, self._assemble(r, blocks))] = r

        def failed(first: int, err: BaseException) -> None:
            nonlocal cut
            errors.append((first, err))
            cut = min(cut, starts[region_of[min(first, len(outputs) - 1)]])

        pool, own = self._pool()
        with local_callbacks(None) as callbacks:
            _, _, pretask, posttask, _ = unpack_callbacks(callbacks)
            started = []
            errored = True
            try:
                for callback in callbacks:
                    if callback[0]:
                        callback[0](dsk)
                    started.append(callback)
                for callback in callbacks:
                    if callback[1]:
                        callback[1](dsk, state)
                for task in self.tasks.values():
                    if not task.missing:
                        make_ready(task)
                while next_write < len(self.regions):
                    submit_tasks(pool)
                    submit_write(pool)
                    if not running:
                        break  # an error stopped what remains (or nothing can run: a bug)
                    done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in done:
                        what = running.pop(future)
                        err = future.exception()
                        if isinstance(what, int):  # a region written
                            if err is not None:
                                failed(starts[what], err)
                                continue
                            next_write += 1
                            for key in self.regions[what]:
                                if not self.tasks[key].waiters:
                                    release(self.tasks[key])
                            finished(what)
                            continue
                        task = what
                        if err is not None:
                            failed(task.first, err)
                            continue
                        value = future.result()
                        base = getattr(value, "base", None)
                        if isinstance(value, np.ndarray) and isinstance(base, np.ndarray):
                            if base.nbytes > 2 * value.nbytes:  # keep a slice, not its array
                                value = value.copy()
                        state["running"].discard(task.key)
                        state["finished"].add(task.key)
                        for callback in posttask:
                            callback(task.key, value, dsk, state, 0)
                        task.state = "memory"
                        values[task] = value
                        if task.output is not None:
                            computed[task.output] = True
                            while frontier < len(outputs) and computed[frontier]:
                                frontier += 1
                        elif not any(value is values.get(d) for d in task.deps.values()):
                            task.size = sizeof(value)  # an alias of its input holds nothing more
                            held += task.size
                        for waiter in list(task.waiters):
                            waiter.missing -= 1
                            if not waiter.missing and waiter.state == "waiting":
                                make_ready(waiter)
                        if not task.waiters and task.output is None:
                            release(task)
                    if held > self.budget:
                        within_budget()
                if errors:
                    raise min(errors, key=lambda e: e[0])[1]
                if next_write < len(self.regions):  # pragma: no cover - a planning bug
                    raise RuntimeError("write_zarr's pipeline found no task to run")
                errored = False
            finally:
                if own:
                    pool.shutdown(wait=True, cancel_futures=True)
                for callback in started:
                    if callback[4]:
                        callback[4](dsk, state, errored)

    def _pool(self) -> tuple[Any, bool]:
        """Return an executor (the calling thread for one worker) and whether it is ours."""
        if self.workers == 1:
            return _Inline(), False
        from dask.threaded import ContextAwareThreadPoolExecutor

        # one more thread than workers: a region is written while the workers compute on
        return ContextAwareThreadPoolExecutor(self.workers + 1), True

    def _assemble(self, r: int, blocks: dict[Any, Any]) -> Any:
        keys = self.regions[r]
        first, last = keys[0][1:], keys[-1][1:]
        if not first:
            return blocks[keys[0]]

        def nest(index: tuple[int, ...]) -> Any:
            if len(index) == len(first):
                return blocks[(self.name, *index)]
            axis = len(index)
            return [nest((*index, i)) for i in range(first[axis], last[axis] + 1)]

        return concatenate3(nest(()))


class _Inline:
    """A stand-in for an executor that runs each task at once, in the calling thread."""

    def submit(self, fn: Any, *args: Any) -> Any:
        from concurrent.futures import Future

        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as err:  # reported where the pipeline collects the results
            future.set_exception(err)
        return future


class _SharedTasks:
    """Compute the regions of one Dask array in order, each task once as far as memory allows.

    The array's graph is optimised once; each region runs the part of it that its blocks need,
    on the current Dask scheduler. Results that a later region needs as well (the blocks a halo
    reaches into across the region's edge, or anything computed once for the whole array) are
    returned with the region and fed to the later regions instead of being computed again:
    those needed soonest first, within ``budget`` bytes.

    Iterating yields each region's values as one numpy array.
    """

    def __init__(self, array: Any, regions: list[list[range]], budget: int) -> None:
        self.array = array
        (optimized,) = dask.optimize(array)
        self.name = optimized.name
        self.graph = convert_legacy_graph(dict(optimized.__dask_graph__()))
        self.deps = {key: node.dependencies for key, node in self.graph.items()}
        #: every dependency is a task of the graph; a graph that refers to results held
        #: elsewhere (e.g. persisted on a distributed cluster) is computed region by region
        self.closed = all(dep in self.graph for deps in self.deps.values() for dep in deps)
        self.closed = self.closed and all(
            key in self.graph for ranges in regions for key in self._outputs(ranges)
        )
        if not self.closed:
            return
        self.dependents: dict[Any, list[Any]] = {key: [] for key in self.graph}
        for key, deps in self.deps.items():
            for dep in deps:
                self.dependents[dep].append(key)
        self.regions = regions
        self.budget = budget
        # users[key]: the regions (in order) whose blocks need the task, if none were kept
        self.users: dict[Any, list[int]] = {}
        for i, ranges in enumerate(regions):
            for key in self._needed(self._outputs(ranges), stop={}):
                self.users.setdefault(key, []).append(i)

    def _outputs(self, ranges: list[range]) -> list[Any]:
        return [(self.name, *index) for index in itertools.product(*ranges)]

    def _needed(self, outputs: list[Any], stop: Mapping[Any, Any]) -> set[Any]:
        """Return the tasks behind ``outputs``, down to (without) the results in ``stop``."""
        needed: set[Any] = set()
        todo = list(outputs)
        while todo:
            key = todo.pop()
            if key in needed or key in stop:
                continue
            needed.add(key)
            todo.extend(self.deps[key])
        return needed

    def _next_use(self, key: Any, after: int) -> int | None:
        users = self.users.get(key, ())
        i = bisect.bisect_right(users, after)
        return users[i] if i < len(users) else None

    def __iter__(self) -> Iterator[Any]:
        from dask.base import get_scheduler

        kept: dict[Any, Any] = {}
        for i, ranges in enumerate(self.regions):
            outputs = self._outputs(ranges)
            run = self._needed(outputs, stop=kept)
            have = run | set(kept)
            # tasks of later regions whose inputs are all at hand (the slices a halo takes from
            # a block) run now, so that the slice is kept rather than the whole block
            ahead = {
                d
                for key in have
                for d in self.dependents[key]
                if d not in have
                and d[0] != self.name
                and self._next_use(d, i) is not None
                and all(x in have for x in self.deps[d])
            }
            run |= ahead
            have |= ahead
            # keep a result if a later region needs a task built on it that is not at hand
            wanted: dict[Any, int] = {}
            for key in have:
                uses = [self._next_use(d, i) for d in self.dependents[key] if d not in have]
                uses = [u for u in uses if u is not None]
                if uses:
                    wanted[key] = min(uses)
            schedule = get_scheduler(collections=[self.array])
            client = _distributed_client(schedule)
            graph = {key: self.graph[key] for key in run}
            graph.update(
                {
                    key: kept[key] if client else DataNode(key, kept[key])
                    for key in kept
                    if self._feeds(key, run)
                }
            )
            returned = [key for key in wanted if key in run]
            if client:  # kept results stay on the workers, as futures
                futures = schedule(graph, [*outputs, *returned], sync=False)
                values = [*client.gather(futures[: len(outputs)]), *futures[len(outputs) :]]
            else:
                values = schedule(graph, [*outputs, *returned])
            results = dict(zip(returned, values[len(outputs) :], strict=True))
            results.update((key, kept[key]) for key in wanted if key in kept)
            kept = self._within_budget(results, wanted, client)
            blocks = dict(zip(outputs, values[: len(outputs)], strict=True))
            del values, results, graph
            piece = self._assemble(ranges, blocks)
            del blocks  # not held while the next region computes
            yield piece
            del piece

    def _feeds(self, key: Any, run: set[Any]) -> bool:
        return any(d in run for d in self.dependents[key])

    def _within_budget(
        self, results: dict[Any, Any], wanted: dict[Any, int], client: Any = None
    ) -> dict[Any, Any]:
        """Keep the results needed soonest, up to ``budget`` bytes (a small view is copied)."""
        kept, used = {}, 0
        if client:  # futures: their sizes as the workers hold them
            client.gather(list(results.values()))  # the results are there, or the error raises
            sizes = client.nbytes(keys=[f.key for f in results.values()], summary=False)
        for key in sorted(wanted, key=wanted.__getitem__):
            value = results[key]
            if client:
                size = int(sizes.get(value.key, 0))
                if used + size <= self.budget:
                    kept[key] = value
                    used += size
                continue
            base = getattr(value, "base", None)
            if isinstance(value, np.ndarray) and isinstance(base, np.ndarray):
                if base.nbytes > 2 * value.nbytes:  # keep a copy, not the whole block behind it
                    value = value.copy()
            size = sizeof(value)
            if used + size <= self.budget:
                kept[key] = value
                used += size
        return kept

    def _assemble(self, ranges: list[range], blocks: dict[Any, Any]) -> Any:
        if not ranges:
            return blocks[(self.name,)]

        def nest(index: tuple[int, ...]) -> Any:
            if len(index) == len(ranges):
                return blocks[(self.name, *index)]
            return [nest((*index, i)) for i in ranges[len(index)]]

        return concatenate3(nest(()))


_NAME_RULE = (
    "a group name must be a non-empty str without '/', '\\' or NUL, must not start with '.' "
    "(so not '.' or '..'), and must not be one of the cube's dimension or coordinate names"
)


def _check_cubes(cubes: Any) -> None:
    """Refuse what :func:`write_zarr` cannot store, before anything is written."""
    if not isinstance(cubes, Mapping):
        raise InputError(
            f"cubes must be a mapping of group name to DataArray, e.g. {{'prediction': cube}}; "
            f"got {type(cubes).__name__}"
        )
    if not cubes:
        raise InputError("cubes is empty; expected at least one cube, e.g. {'prediction': cube}")
    for name, cube in cubes.items():
        if not isinstance(name, str):
            raise InputError(f"group name {name!r} is a {type(name).__name__}; {_NAME_RULE}")
        bad = [c for c in ("/", "\\", "\0") if c in name]
        if not name or bad or name.startswith("."):
            why = "is empty" if not name else f"contains {bad[0]!r}" if bad else "starts with '.'"
            raise InputError(f"group name {name!r} {why}; {_NAME_RULE}")
        if not isinstance(cube, xr.DataArray):
            raise InputError(
                f"cube {name!r} is a {type(cube).__name__}; expected an xarray.DataArray "
                "(write each variable of a Dataset as its own cube)"
            )
        taken = sorted({str(d) for d in cube.dims} | {str(c) for c in cube.coords})
        if name in taken:
            raise InputError(
                f"group name {name!r} is also a dimension or coordinate of that cube "
                f"({taken}); {_NAME_RULE} (rename the group, e.g. {name + '_map'!r})"
            )


def open_zarr(
    path: str | os.PathLike[str],
    name: str | None = None,
    *,
    chunks: Any = None,
) -> dict[str, xr.DataArray] | xr.DataArray:
    """Open a store written by :func:`write_zarr`: its cubes, lazily, as they were written.

    Each cube comes back as a Dask-backed DataArray named after its group, chunked as stored,
    with its dimensions, attributes and coordinates: ``x``/``y``, the CRS on ``spatial_ref``
    (so :func:`xfusion.grids.geobox_of` gives the grid the cube was written on), ``time``,
    ``band`` and the per-band ``band_kind``/``band_scale``/``band_offset`` coordinates.
    Coordinates of at most one dimension are loaded (they are metadata); data and larger
    coordinates stay lazy. String coordinates come back as object arrays of ``str``, as
    :func:`xfusion.bands.set_band_kinds` builds them (Zarr would give numpy's ``StringDType``).

    Only a complete store is opened: a partial one (``<path>.partial``, left by an interrupted
    or failed write) is refused, since some of its regions were never written and would read
    as fill values.

    Parameters
    ----------
    path : path-like
        The store (a folder ending in ``.zarr``).
    name : str, optional
        The cube to open. Default: all of them.
    chunks : int, tuple or mapping of str to int, optional
        Chunk sizes to open with, in the grammar of :func:`xfusion.validate.normalize_chunks`
        (an int for ``y`` and ``x``, ``(y, x)``, or a mapping by dimension name; ``-1`` or
        None for a whole dimension). Default: the store's chunks; dimensions a cube lacks are
        ignored.

    Returns
    -------
    dict of str to xarray.DataArray, or xarray.DataArray
        Without ``name``, every cube by group name, in the order they were written; with
        ``name``, that cube.

    Raises
    ------
    MissingFileError
        Nothing at ``path`` (the message says if a partial store lies next to it).
    SourceError
        ``path`` is not a complete store written by :func:`write_zarr`.
    InputError
        ``name`` is not a cube of the store (the message lists the cubes), or ``chunks``
        breaks the grammar of ``chunks=`` (checked before the store is read).

    Examples
    --------
    >>> import tempfile, numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.arange(6.0).reshape(2, 3), dims=("y", "x"),
    ...                     coords={"y": [10.0, 0.0], "x": [0.0, 10.0, 20.0]})
    >>> store = write_zarr({"a": cube, "b": 2 * cube}, tempfile.mkdtemp() + "/out.zarr")
    >>> cubes = open_zarr(store)
    >>> list(cubes), cubes["b"].chunks is not None
    (['a', 'b'], True)
    >>> open_zarr(store, "b").values.tolist()
    [[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]]
    """
    dims = list(map(str, chunks)) if isinstance(chunks, Mapping) else ["y", "x"]
    sizes = normalize_chunks(chunks, dims, "open_zarr chunks")
    store = Path(path)
    names = _complete_store_cubes(store)
    if name is not None:
        if not isinstance(name, str) or name not in names:
            raise InputError(f"no cube {name!r} in {str(store)!r}; its cubes are {names}")
        return _open_cube(store, name, sizes)
    return {n: _open_cube(store, n, sizes) for n in names}


def _complete_store_cubes(store: Path) -> list[str]:
    """Return the cube names of a complete store, in write order; typed errors otherwise."""
    partial = _partial_path(store)
    if not store.exists():
        hint = (
            f"; {str(partial)!r} is a partial store left by an interrupted write: finish it "
            "with write_zarr(..., resume=True)"
            if partial.exists()
            else ""
        )
        raise MissingFileError(f"no Zarr store at {str(store)!r}{hint}")
    if store.name.endswith(".partial") or _completed_digest(store) is None:
        raise SourceError(
            f"{str(store)!r} is not a complete store written by xfusion.write_zarr (no "
            f"{COMPLETE_ATTR!r} mark on its root group); expected a finished write_zarr output "
            "(a partial store is finished by write_zarr(..., resume=True); other Zarr stores "
            "open with xarray.open_zarr)"
        )
    try:
        metadata = json.loads((store / ".zmetadata").read_text())["metadata"]
        groups = sorted(
            k[: -len("/.zgroup")] for k in metadata if k.endswith("/.zgroup") and k.count("/") == 1
        )
        mark = json.loads((store / ".zattrs").read_text())[COMPLETE_ATTR]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SourceError(
            f"cannot read the consolidated metadata of {str(store)!r} ({err}); expected a store "
            "written by xfusion.write_zarr"
        ) from err
    written = [n for n in mark.get("cubes") or [] if n in groups]  # stores before 'cubes': sorted
    return written + [g for g in groups if g not in written]


def _open_cube(store: Path, name: str, sizes: Mapping[str, int]) -> xr.DataArray:
    """One cube of a complete store; ``sizes``: checked chunks by dim (dims it lacks ignored)."""
    # opened without Dask first, so the small coordinates below are read, not computed
    # per-group metadata: a few small local files (older xarray misreads consolidated groups)
    cube = xr.open_zarr(store, group=name, chunks=None, consolidated=False)[name]
    restored = {}
    for key, coord in cube.coords.items():
        if coord.ndim > 1:
            continue  # may be as large as the data: stays lazy
        coord = coord.load()  # xf: computes coordinates (metadata, at most one dimension)
        if coord.dtype.kind == "T":  # numpy's StringDType from Zarr: object of str, as written
            strings = np.array([str(v) for v in coord.values.ravel()], dtype=object)
            coord = coord.copy(data=strings.reshape(coord.shape))
        restored[key] = coord
    stored = dict(cube.encoding.get("preferred_chunks") or {})
    wanted = {d: c for d, c in sizes.items() if d in cube.dims}
    return cube.chunk({**stored, **wanted}).assign_coords(restored)


def check_resumable(path: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> None:
    """Raise :class:`~xfusion.errors.ConfigError` if ``path``'s partial store has another origin.

    The check :func:`write_zarr` makes with ``resume=True``, on the fingerprint alone, so that a
    caller can refuse before doing the work that produces the cubes. No partial store: no error.
    """
    partial = _partial_path(Path(path))
    progress = _read_progress(partial)
    if progress is not None:
        reason = fingerprint_difference(progress.get("fingerprint"), fingerprint)
        if reason:
            raise ConfigError(_cannot_resume(partial, reason))


def _zarr_dataset(name: str, cube: xr.DataArray, sizes: Mapping[str, int]) -> xr.Dataset:
    """One cube as a Dataset ready for Zarr: lazy data in regular chunks, coordinates loaded.

    ``sizes``: the checked ``chunks`` of :func:`write_zarr` by dim (-1: whole); dims it lacks
    are left out.
    """
    ds = cube.rename(name).to_dataset()
    for var in ds.variables.values():
        var.encoding.clear()
    lazy = [k for k, v in ds.coords.items() if v.chunks is not None]
    if lazy:
        ds = ds.assign_coords({k: ds[k].compute() for k in lazy})  # xf: computes coordinates
    data = ds[name]
    wanted = {d: s for d, s in sizes.items() if d in data.dims}
    if data.chunks is None or wanted:
        data = data.chunk(wanted)
    irregular = {
        dim: max(sizes)
        for dim, sizes in zip(data.dims, data.chunks or (), strict=True)
        if len(sizes) > 1 and (len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0])
    }
    if irregular:  # Zarr needs equal chunks (the last may be smaller)
        data = data.chunk(irregular)
    ds[name] = data
    return ds


def _digest_array(values: np.ndarray) -> str:
    if values.dtype == object:
        raw = json.dumps(values.tolist(), default=str).encode()
    else:
        raw = np.ascontiguousarray(values).tobytes()
    head = f"{values.dtype.str}{values.shape}".encode()
    return hashlib.sha256(head + raw).hexdigest()[:16]


def _schema(datasets: Mapping[str, xr.Dataset]) -> dict[str, Any]:
    """Names, dimensions, shapes, chunks, dtypes, attributes and coordinate digests."""
    schema = {}
    for name, ds in datasets.items():
        data = ds[name]
        schema[name] = jsonable(
            {
                "dims": list(data.dims),
                "shape": list(data.shape),
                "chunks": [int(c[0]) for c in data.chunks or ()],
                "dtype": data.dtype.str,
                "attrs": dict(data.attrs),
                "coords": {
                    str(k): [_digest_array(v.values), dict(v.attrs)] for k, v in ds.coords.items()
                },
            }
        )
    return schema


def _zarr_regions(
    datasets: Mapping[str, xr.Dataset], region_chunks: Mapping[str, int] | None = None
) -> list[tuple[str, str, dict[str, slice]]]:
    """``(key, cube, {dim: slice})`` of every region, e.g. ``("a/y=0:2", "a", {"y": ...})``."""
    regions = []
    for name, ds in datasets.items():
        data = ds[name]
        if not data.dims:
            regions.append((f"{name}", name, {}))
            continue
        spans = _region_spans(data, region_chunks)
        for combo in itertools.product(*(spans[dim] for dim in spans)):
            where = dict(zip(spans, combo, strict=True))
            key = ",".join(f"{dim}={s.start}:{s.stop}" for dim, s in where.items())
            regions.append((f"{name}/{key}", name, where))
    return regions


def _region_spans(data: xr.DataArray, region_chunks: Mapping[str, int] | None) -> dict:
    """For each region dimension, the slices covering ``n`` of its chunks at a time."""
    if region_chunks is None:
        region_chunks = {"y" if "y" in data.dims else data.dims[0]: 1}
    spans = {}
    for dim, n in region_chunks.items():
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise InputError(
                f"region_chunks[{dim!r}] must be a positive number of chunks; got {n!r}"
            )
        if dim not in data.dims:
            continue  # a dimension other cubes of the store have
        sizes = [int(s) for s in data.chunks[data.get_axis_num(dim)]]
        bounds = np.concatenate([[0], np.cumsum(sizes)])[:: int(n)].tolist()
        if bounds[-1] != sum(sizes):
            bounds.append(sum(sizes))
        spans[dim] = [slice(a, b) for a, b in itertools.pairwise(bounds)]
    return spans


def _read_progress(partial: Path) -> dict[str, Any] | None:
    try:
        progress = json.loads((partial / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return progress if isinstance(progress, dict) else None


def _write_progress(partial: Path, progress: Mapping[str, Any]) -> None:
    tmp = partial / f"{PROGRESS_FILE}.tmp"
    tmp.write_text(json.dumps(progress, sort_keys=True))
    os.replace(tmp, partial / PROGRESS_FILE)


def _completed_digest(store: Path) -> str | None:
    try:
        attrs = json.loads((store / ".zattrs").read_text())
        return attrs[COMPLETE_ATTR]["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finish_store(
    partial: Path, final: Path, digest: str, n_regions: int, names: list[str]
) -> None:
    import zarr

    root = zarr.open_group(str(partial), mode="r+", zarr_format=2)
    mark = {"digest": digest, "format": _STORE_FORMAT, "regions": n_regions, "cubes": names}
    root.attrs.update({COMPLETE_ATTR: mark})
    (partial / PROGRESS_FILE).unlink()
    zarr.consolidate_metadata(str(partial), zarr_format=2)
    _replace_dir(partial, final)


def _cannot_resume(partial: Path, reason: str) -> str:
    return (
        f"cannot resume {str(partial)!r}: it was written by a different run ({reason}); run "
        "with the same configuration, or without resume to discard it and start over"
    )


def fingerprint_difference(before: Any, now: Mapping[str, Any]) -> str:
    """Say what differs between two fingerprints ('' if nothing).

    Recipe fingerprints (:meth:`xfusion.recipes._base.RecipeConfig.fingerprint`) are compared
    field by field (``recipe``, ``xfusion`` and each ``config`` value).
    """
    before = before if isinstance(before, dict) else {}
    now = jsonable(dict(now))
    for key in ("recipe", "xfusion"):
        if before.get(key) != now.get(key):
            return f"{key} was {before.get(key)!r}, now {now.get(key)!r}"
    old, new = before.get("config") or {}, now.get("config") or {}
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if changed:
        return "; ".join(
            f"config field {k!r} was {old.get(k, '<unset>')!r}, now {new.get(k, '<unset>')!r}"
            for k in changed
        )
    if before != now:
        return "its fingerprint differs"
    return ""


def _difference(progress: Mapping[str, Any], identity: Mapping[str, Any]) -> str:
    """Why a partial store does not match what is being written."""
    reason = fingerprint_difference(progress.get("fingerprint"), identity["fingerprint"])
    if reason:
        return reason
    old, new = progress.get("schema") or {}, identity["schema"]
    if sorted(old) != sorted(new):
        return f"outputs were {sorted(old)}, now {sorted(new)}"
    for name in sorted(new):
        for key in ("dims", "shape", "chunks", "dtype", "attrs", "coords"):
            if old[name].get(key) != new[name].get(key):
                return f"output {name!r} {key} was {old[name].get(key)}, now {new[name].get(key)}"
    return f"store format {progress.get('format')!r}, expected {_STORE_FORMAT}"
