"""Cloud and validity masks, scaling and mask dilation."""

from __future__ import annotations


def mask_bits(da, qa, bits, *, drop=True):
    """Not implemented yet."""
    raise NotImplementedError


def mask_classes(da, qa, classes, *, drop=True):
    """Not implemented yet."""
    raise NotImplementedError


def mask_range(da, lo, hi):
    """Not implemented yet."""
    raise NotImplementedError


def scale(da, factor, offset=0.0):
    """Not implemented yet."""
    raise NotImplementedError


def dilate(mask, radius):
    """Not implemented yet."""
    raise NotImplementedError

