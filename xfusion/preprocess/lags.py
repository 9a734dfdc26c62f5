"""Multitemporal lag stacks."""

from __future__ import annotations


def lags(da, n, *, cloud_score=None):
    """Not implemented yet."""
    raise NotImplementedError

