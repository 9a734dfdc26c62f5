"""Blockwise inference over a Dask cube."""

from __future__ import annotations


def predict(da, model, *, halo=None, tile=None, batch_size=None):
    """Not implemented yet."""
    raise NotImplementedError

