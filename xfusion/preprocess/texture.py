"""Local binary patterns."""

from __future__ import annotations


def lbp(da, points=8, radius=1):
    """Not implemented yet."""
    raise NotImplementedError

