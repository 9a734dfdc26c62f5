"""Point and patch sampling for training."""

from __future__ import annotations


def sample(da, labels, n, *, seed=0, stratify=False):
    """Not implemented yet."""
    raise NotImplementedError


def patches(da, target=None, *, size, n, seed=0, regions=None):
    """Not implemented yet."""
    raise NotImplementedError

