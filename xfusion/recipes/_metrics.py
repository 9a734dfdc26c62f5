"""Scores a recipe reports beyond the library's: :mod:`xfusion.models.downscaling`'s, here too.

``recipe.aggregation_rmse`` is :func:`xfusion.models.downscaling.aggregation_rmse` (the function
moved to the library, where the downscaling scores live; the name stays for recipes).
"""

from __future__ import annotations

from xfusion.models.downscaling import aggregation_rmse

__all__ = ["aggregation_rmse"]
