"""Compiled kernels on plain numpy arrays; :func:`njit` compiles them with a cache where it can.

``numba.njit(cache=True)`` raises ``RuntimeError: cannot cache function ...: no locator
available`` *when the module is imported* if numba finds no writable place for its cache: the
``__pycache__`` beside the source (read-only in a container image or a system install) and the
user-wide cache (``~/.cache/numba``, unwritable for a batch job run as ``nobody`` or with a
read-only ``HOME``), and ``NUMBA_CACHE_DIR`` unset. :func:`njit` then compiles the kernel without
the on-disk cache instead: the kernels work the same, each process compiles the ones it uses on
first call (a few seconds). Set ``NUMBA_CACHE_DIR`` to a writable folder to keep a cache there.

There is deliberately no fallback to a shared temporary folder: numba's cache index is a pickle,
and a folder under ``/tmp`` that another user could create first would let them run code in ours.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numba

__all__ = ["njit"]

log = logging.getLogger(__name__)


def njit(**options: Any) -> Callable[[Callable], Any]:
    """``numba.njit(cache=True, **options)``, or without the cache where numba cannot write one.

    Examples
    --------
    >>> import numpy as np
    >>> @njit(nogil=True)
    ... def total(a):
    ...     s = 0.0
    ...     for v in a:
    ...         s += v
    ...     return s
    >>> float(total(np.arange(4.0)))
    6.0
    """

    def decorate(func: Callable) -> Any:
        try:
            return numba.njit(cache=True, **options)(func)
        except RuntimeError as err:  # no writable cache locator (read-only tree and HOME)
            if "cannot cache" not in str(err):
                raise
            log.debug("compiling %s without numba's on-disk cache: %s", func.__qualname__, err)
            return numba.njit(cache=False, **options)(func)

    return decorate
