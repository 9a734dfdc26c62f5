"""A row of map panels side by side: a recipe's inputs, labels and maps at a glance.

:func:`plot_map_row` draws images that are already in memory (numpy arrays), one panel each,
with an optional dashed line marking where a held-out strip begins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xfusion.errors import InputError

__all__ = ["plot_map_row"]


def plot_map_row(
    panels: Sequence[tuple[str, Any, Mapping[str, Any]]],
    *,
    title: str | None = None,
    marker_x: int | None = None,
    path: str | os.PathLike[str] | None = None,
    dpi: int = 90,
    panel_size: float = 3.0,
) -> Any:
    """Draw images side by side in one row, each under its title; return the Figure.

    Parameters
    ----------
    panels : sequence of (title, image, imshow keywords)
        Each image is ``(y, x)`` or an RGB ``(y, x, 3)`` array, drawn with
        ``imshow(image, interpolation="nearest", **keywords)`` (``cmap``, ``vmin``, ``vmax`` …).
    title : str, optional
        Title of the whole figure.
    marker_x : int, optional
        Column where a dashed vertical line is drawn on every panel (the first column of a
        held-out strip).
    path : path, optional
        Write the figure as a PNG there.
    dpi : int
        Resolution of the figure.
    panel_size : float
        Width of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> fig = plot_map_row([("a", np.zeros((4, 4)), {}), ("b", np.ones((4, 4)), {"cmap": "gray"})],
    ...                    marker_x=2)
    >>> [ax.get_title() for ax in fig.axes]
    ['a', 'b']
    """
    from matplotlib.figure import Figure

    if not panels:
        raise InputError("plot_map_row needs at least one (title, image, keywords) panel")
    for name, image, _ in panels:
        if np.ndim(image) not in (2, 3):
            raise InputError(f"panel {name!r}: expected a (y, x) or (y, x, 3) image")
    size = (panel_size * len(panels), panel_size + 0.4)
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, image, keywords) in zip(axes, panels, strict=True):
        ax.imshow(image, interpolation="nearest", **dict(keywords))
        if marker_x is not None:
            ax.axvline(marker_x - 0.5, color="#ff7f00", lw=1.0, ls="--")
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
