"""Synthetic scenes with known truth, and writing scenes as a local STAC catalog of COGs."""

from __future__ import annotations

from xfusion.datasets.stac import write_stac
from xfusion.datasets.synthetic import RECIPES, SCENES, Scene, register_scene, synthetic_scene

__all__ = ["RECIPES", "SCENES", "Scene", "register_scene", "synthetic_scene", "write_stac"]
