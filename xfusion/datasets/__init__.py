"""Synthetic scenes with known truth, and writing scenes as a local STAC catalog of COGs."""

from __future__ import annotations

from xfusion.datasets.stac import write_stac
from xfusion.datasets.synthetic import RECIPES, Scene, synthetic_scene

__all__ = ["RECIPES", "Scene", "synthetic_scene", "write_stac"]
