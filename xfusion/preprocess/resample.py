"""Resampling onto another grid."""

from __future__ import annotations


def resample(da, grid_or_like, resampling='average'):
    """Not implemented yet."""
    raise NotImplementedError

