"""One composite per year over the same months: windows, composites and a yearly stack.

Mapping change from year to year compares like with like: every year is summarised over the
same months (a July–December median, say). :func:`season_window` gives a year's window,
:func:`window_composite` its composite (an error naming the source and the window when no image
falls in it), and :func:`stack_years` puts one layer per year on a ``time`` axis dated on the
first day of the season; :func:`fused_years` does all three for several sources fused on one
grid, and :func:`select_years` picks given years of such a stack. All are lazy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import xarray as xr

from xfusion.errors import EmptySelectionError, InputError
from xfusion.preprocess.composite import composite
from xfusion.preprocess.fuse import fuse

__all__ = ["fused_years", "season_window", "select_years", "stack_years", "window_composite"]


def _check_season(season: Sequence[int]) -> tuple[int, int]:
    if len(season) != 2 or not 1 <= season[0] <= season[-1] <= 12:
        raise InputError(
            f"season must be (first_month, last_month) with 1 <= first <= last <= 12; "
            f"got {tuple(season)}"
        )
    return int(season[0]), int(season[1])


def season_window(year: int, season: Sequence[int]) -> tuple[str, str]:
    """First and last day of ``year``'s window from month ``season[0]`` to ``season[1]``.

    Examples
    --------
    >>> season_window(2016, (7, 12)), season_window(2015, (1, 2))
    (('2016-07-01', '2016-12-31'), ('2015-01-01', '2015-02-28'))
    """
    first, last = _check_season(season)
    end = pd.Timestamp(year, last, 1) + pd.offsets.MonthEnd(0)
    return f"{year}-{first:02d}-01", end.strftime("%Y-%m-%d")


def window_composite(
    cube: xr.DataArray, window: tuple[str, str], what: str, how: str = "median"
) -> xr.DataArray:
    """Return the ``how`` composite of ``cube``'s images in ``window`` (inclusive dates).

    :func:`xfusion.composite` with ``start`` and ``end``; an
    :class:`~xfusion.errors.EmptySelectionError` names ``what`` (the source) and the window
    when no image falls in it. Lazy.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> times = pd.to_datetime(["2015-07-05", "2015-08-05", "2016-07-05"])
    >>> cube = xr.DataArray(np.arange(3.0).reshape(3, 1, 1, 1), dims=("time", "band", "y", "x"),
    ...                     coords={"time": times, "band": ["a"]})
    >>> float(window_composite(cube, ("2015-07-01", "2015-12-31"), "a source").squeeze())
    0.5
    """
    try:
        return composite(cube, how, start=window[0], end=window[1])
    except EmptySelectionError as err:
        raise EmptySelectionError(f"{what} has no image in {window}: {err}") from err


def stack_years(
    layers: Sequence[xr.DataArray], years: Sequence[int], month: int = 1
) -> xr.DataArray:
    """Stack one ``(band, y, x)`` layer per year on a ``time`` axis dated ``year-month-01``.

    Returns ``(time, band, y, x)``. Lazy.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> layer = xr.DataArray(np.zeros((1, 2, 2)), dims=("band", "y", "x"))
    >>> stacked = stack_years([layer, layer + 1], [2015, 2016], month=7)
    >>> stacked.dims, [str(t)[:10] for t in stacked.time.values]
    (('time', 'band', 'y', 'x'), ['2015-07-01', '2016-07-01'])
    """
    if len(layers) != len(years) or not layers:
        raise InputError(f"need one layer per year; got {len(layers)} layers for years {years}")
    times = pd.DatetimeIndex([pd.Timestamp(y, month, 1) for y in years])
    stacked = xr.concat(list(layers), dim=pd.Index(times.as_unit("ns"), name="time"))
    return stacked.transpose("time", "band", "y", "x")


def select_years(cube: xr.DataArray, years: Sequence[int]) -> xr.DataArray:
    """Return the time steps of ``cube`` in ``years``, in that order (the first of each year).

    An :class:`~xfusion.errors.EmptySelectionError` names the years ``cube`` lacks. Lazy.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> times = pd.to_datetime(["2015-07-01", "2016-07-01", "2017-07-01"])
    >>> cube = xr.DataArray(np.arange(3.0), dims="time", coords={"time": times})
    >>> select_years(cube, [2017, 2015]).values.tolist()
    [2.0, 0.0]
    """
    have = list(cube.time.to_index().year)
    missing = [y for y in years if y not in have]
    if missing:
        raise EmptySelectionError(f"years {missing} not in the cube; its years are {have}")
    return cube.isel(time=[have.index(y) for y in years])


def fused_years(
    sources: Mapping[str, xr.DataArray],
    years: Sequence[int],
    season: Sequence[int],
    grid: Any,
    *,
    names: Mapping[str, str] | None = None,
    reference_years: Mapping[str, tuple[int, int]] | None = None,
    resampling: str = "average",
) -> xr.DataArray:
    """Fuse every source's ``season`` median composite of each year on ``grid``.

    Per year of ``years``, each source is composited over :func:`season_window` and the
    composites are fused with :func:`xfusion.fuse` (bands ``"<source>:<band>"``, ``resampling``
    onto ``grid``); the years are stacked with :func:`stack_years` on the season's first month.
    A source of ``reference_years``, ``{source: (mean_year, std_year)}``, is resampled onto
    ``grid`` first and standardised with the mean of ``mean_year``'s composite and the standard
    deviation of ``std_year``'s, so that every year shares one scale. ``names`` are the
    sources' names in errors (an :class:`~xfusion.errors.EmptySelectionError` for a window
    without image names the source and the year). Lazy.

    Returns
    -------
    DataArray
        ``(time, band, y, x)`` on ``grid``.
    """
    names, reference_years = names or {}, reference_years or {}

    def composite_of(key: str, year: int) -> xr.DataArray:
        what = f"{names.get(key, key)} ({year})"
        layer = window_composite(sources[key], season_window(year, season), what)
        return layer.xf.resample(grid, resampling) if key in reference_years else layer

    references = {
        key: (composite_of(key, mean_year), composite_of(key, std_year))
        for key, (mean_year, std_year) in reference_years.items()
    }
    layers = []
    for year in years:
        seasons = {key: composite_of(key, year) for key in sources}
        for key, (mean, std) in references.items():
            seasons[key] = seasons[key].xf.standardize(mean=mean, std=std)
        layers.append(fuse(seasons, grid=grid, resampling=resampling))
    return stack_years(layers, years, season[0])
