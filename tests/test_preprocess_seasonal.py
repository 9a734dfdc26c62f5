"""xfusion.preprocess.seasonal: yearly windows, composites and fused yearly stacks.

The references are numpy medians, means and standard deviations of the images each window holds.
"""

from __future__ import annotations

import numpy as np
import pytest

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.errors import EmptySelectionError, InputError
from xfusion.preprocess import seasonal
from xfusion.testing import raise_if_dask_computes

TIMES = ["2015-03-01", "2015-07-10", "2015-09-10", "2015-11-10", "2016-08-01", "2016-10-01"]
GRID = xf.grid((0.0, -40.0, 40.0, 0.0), "EPSG:32633", 10.0)


def _series(seed: int, bands: list[str], chunked: bool = True):
    values = np.random.default_rng(seed).uniform(0, 1, (len(TIMES), len(bands), 4, 4))
    chunks = {"y": 2, "x": 2} if chunked else None
    cube = synthetic_cube(values.astype("float32"), bands, times=TIMES, grid=GRID, chunks=chunks)
    return cube, values


def test_season_window_spans_whole_months_and_refuses_a_bad_season():
    assert seasonal.season_window(2016, (2, 2)) == ("2016-02-01", "2016-02-29")
    assert seasonal.season_window(2015, (7, 12)) == ("2015-07-01", "2015-12-31")
    with pytest.raises(InputError, match=r"season must be \(first_month, last_month\)"):
        seasonal.season_window(2015, (12, 7))


@pytest.mark.parametrize("chunked", [False, True])
def test_window_composite_is_the_median_of_the_window_and_names_an_empty_one(chunked):
    cube, values = _series(0, ["a", "b"], chunked)
    with raise_if_dask_computes():
        median = seasonal.window_composite(cube, ("2015-07-01", "2015-12-31"), "the source")
    np.testing.assert_allclose(median.values, np.median(values[1:4], 0), 1e-6)
    with pytest.raises(EmptySelectionError, match=r"the source has no image in \('2017"):
        seasonal.window_composite(cube, ("2017-07-01", "2017-12-31"), "the source")


def test_stack_years_and_select_years():
    layer = synthetic_cube(np.zeros((1, 2, 2)), ["a"])
    stacked = seasonal.stack_years([layer, layer + 1, layer + 2], [2015, 2016, 2017], month=7)
    assert stacked.dims == ("time", "band", "y", "x")
    picked = seasonal.select_years(stacked, [2017, 2015])
    assert picked.isel(band=0, y=0, x=0).values.tolist() == [2.0, 0.0]
    with pytest.raises(EmptySelectionError, match=r"years \[2020\] not in the cube"):
        seasonal.select_years(stacked, [2015, 2020])
    with pytest.raises(InputError, match="one layer per year"):
        seasonal.stack_years([layer], [2015, 2016])


def test_fused_years_composites_fuses_and_standardises_on_reference_years():
    optical, optical_values = _series(1, ["red", "nir"])
    lights, light_values = _series(2, ["rad"])
    with raise_if_dask_computes():
        fused = seasonal.fused_years(
            {"s2": optical, "viirs": lights},
            [2015, 2016],
            (7, 12),
            GRID,
            reference_years={"viirs": (2015, 2016)},
        )
    assert fused.dims == ("time", "band", "y", "x")
    assert fused.band.values.tolist() == ["s2:red", "s2:nir", "viirs:rad"]
    assert [str(t)[:10] for t in fused.time.values] == ["2015-07-01", "2016-07-01"]
    seasons = {2015: slice(1, 4), 2016: slice(4, 6)}
    for i, year in enumerate((2015, 2016)):
        expected = np.median(optical_values[seasons[year]], 0)
        np.testing.assert_allclose(fused.isel(time=i).values[:2], expected, rtol=1e-5)
    medians = {y: np.median(light_values[seasons[y], 0], 0) for y in (2015, 2016)}
    scaled = (medians[2016] - medians[2015].mean()) / medians[2016].std()
    np.testing.assert_allclose(fused.isel(time=1, band=2).values, scaled, rtol=1e-4, atol=1e-5)
    with pytest.raises(EmptySelectionError, match=r"Sentinel-2 \(2018\) has no image"):
        seasonal.fused_years({"s2": optical}, [2018], (7, 12), GRID, names={"s2": "Sentinel-2"})
