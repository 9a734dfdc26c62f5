"""Testing utilities for xfusion and for code built on it (laziness checks).

>>> import dask.array as da
>>> from xfusion.testing import raise_if_dask_computes
>>> with raise_if_dask_computes() as counter:
...     lazy = da.ones(4, chunks=2) + 1
>>> counter.total_computes
0
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dask

__all__ = ["CountingScheduler", "raise_if_dask_computes"]


class CountingScheduler:
    """A Dask scheduler that counts computes and fails beyond ``max_computes``."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        """Count this compute, fail past the limit, else run it synchronously."""
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many computes. Total: {self.total_computes} > max: {self.max_computes}."
            )
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Run the block with a scheduler that fails after ``max_computes`` computes."""
    scheduler = CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler
