"""Fusing several sources onto one grid."""

from __future__ import annotations


def fuse(sources, *, grid, resampling='average'):
    """Not implemented yet."""
    raise NotImplementedError

