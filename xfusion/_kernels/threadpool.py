"""One BLAS/OpenMP thread per task while Dask's threaded scheduler runs xfusion's pixel tasks.

Dask's threaded scheduler runs one task per core; a task calling BLAS (numpy's ``@``, scipy,
scikit-learn) starts another pool of one thread per core, so ``n`` cores run ``n²`` threads
that evict each other's caches. While a local computation holds xfusion's BLAS-heavy block
tasks (pixel predictions, ridge statistics: :data:`BLAS_TASKS`), the native thread pools (BLAS
and OpenMP, through threadpoolctl) are limited to :data:`TASK_THREADS`.

Race-free by construction: the limit is set and restored only in the thread that asked for the
computation, before its first task starts and after its last task has finished (a Dask callback,
registered on import and again by every graph builder, :func:`ensure_registered`). Setting it
inside the tasks instead would not be: OpenBLAS's pthreads pool (the one numpy and scipy wheels
ship) has one process-wide thread count, a task restoring it on exit does so under the feet of
the tasks still running, and changes made from worker threads are ignored (threadpoolctl >= 3.8
lets one thread at a time control OpenBLAS). Computations started concurrently from several
threads run without the limit (Dask runs global callbacks for one computation at a time) and
never leave it set. On a ``distributed`` cluster the nanny already starts workers with
``OMP_NUM_THREADS=1``/``OPENBLAS_NUM_THREADS=1``; the synchronous scheduler is left alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import dask
from dask.callbacks import Callback

__all__ = [
    "BLAS_TASKS",
    "TASK_THREADS",
    "active_limit",
    "ensure_registered",
    "holds_blas_tasks",
]

#: Native threads per task while xfusion's BLAS tasks run; ``None`` switches the limit off (the
#: ``ridge`` benchmark measures both).
TASK_THREADS: int | None = 1

#: Names of the block functions that call BLAS, as they appear in Dask keys (also in fused
#: keys, which join the names of the tasks they fuse).
BLAS_TASKS = ("pixel_block", "block_table", "block_cube")

_SINGLE_THREADED = ("sync", "synchronous", "single-threaded")
_lock = threading.Lock()
_holders: set[int] = set()
_limiter = None
_controller = None


def holds_blas_tasks(keys: Iterable) -> bool:
    """Tell whether a graph's keys name one of :data:`BLAS_TASKS`.

    Examples
    --------
    >>> holds_blas_tasks([("mean_chunk-pixel_block-mean_agg-aggregate-1f2e", 0, 0)])
    True
    >>> holds_blas_tasks([("random_sample-1f2e", 0)])
    False
    """
    for key in keys:
        name = key[0] if isinstance(key, tuple) else key
        if isinstance(name, str) and any(task in name for task in BLAS_TASKS):
            return True
    return False


def _release_openblas() -> None:
    """Let any thread change OpenBLAS's pool size next.

    threadpoolctl >= 3.8 gives the first thread that changes it sole control until released;
    the computations that set and restore the limit may run in different threads, and our
    lock already serialises them.
    """
    from threadpoolctl import OpenBLASController

    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        try:
            clear(force=True)
        except TypeError:  # a threadpoolctl whose clear takes no force (the caller's own)
            clear()


class _LimitBlasThreads(Callback):
    """Limit the native pools while a local computation holds xfusion's BLAS tasks."""

    def _start(self, dsk) -> None:
        global _limiter, _controller
        if TASK_THREADS is None or dask.config.get("scheduler", None) in _SINGLE_THREADED:
            return
        if not holds_blas_tasks(dsk):
            return
        with _lock:
            if _limiter is None:
                from threadpoolctl import ThreadpoolController

                if _controller is None:
                    _controller = ThreadpoolController()
                _release_openblas()
                _limiter = _controller.limit(limits=TASK_THREADS)
                _release_openblas()
            _holders.add(id(dsk))

    def _finish(self, dsk, state, errored) -> None:
        global _limiter
        with _lock:
            if id(dsk) not in _holders:
                return
            _holders.discard(id(dsk))
            if not _holders and _limiter is not None:
                _release_openblas()
                _limiter.restore_original_limits()
                _release_openblas()
                _limiter = None


_CALLBACK = _LimitBlasThreads()


def ensure_registered() -> None:
    """(Re-)register the callback; graph builders call this before returning a graph.

    Dask takes its global callbacks out of ``Callback.active`` while a local computation runs
    (so nested schedulers do not run them twice) and puts back the set it took: computations
    started concurrently from several threads run without global callbacks, and can leave one
    unregistered. The limit then does not apply to those; calling this again restores it for
    the next computation.
    """
    if _CALLBACK._callback not in Callback.active:
        Callback.active.add(_CALLBACK._callback)


ensure_registered()


def active_limit() -> int | None:
    """Return the per-task native thread limit now in force (None when none is).

    Examples
    --------
    >>> active_limit() is None
    True
    """
    with _lock:
        return TASK_THREADS if _limiter is not None else None
