"""Landsat Collection-2 features against a numpy re-computation; laziness; typed errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from xfusion.errors import BandError, InputError
from xfusion.preprocess.landsat import OPTICAL_BANDS, collection2_assets, collection2_features
from xfusion.testing import raise_if_dask_computes

BANDS = collection2_assets()


def _cube(seed=0):
    """Digital numbers ``(time, band, y, x)``: some pixels cloudy, some out of range."""
    rng = np.random.default_rng(seed)
    dn = rng.uniform(5000, 45000, (3, len(BANDS), 6, 7))
    dn[:, BANDS.index("ST_B10")] = rng.uniform(30000, 80000, (3, 6, 7))  # 251..422 K
    dn[:, BANDS.index("QA_PIXEL")] = rng.choice([0, 1, 8, 16, 32, 64], (3, 6, 7))
    return xr.DataArray(
        dn, dims=("time", "band", "y", "x"),
        coords={"band": BANDS, "time": np.array(["2021-01-01", "2021-02-01", "2021-03-01"],
                                                dtype="datetime64[ns]")},
    )  # fmt: skip


def _numpy(dn):
    """QA bits 0-4 and 7273 < DN < 43636 masked, C2 scaling, thermal clamped to 0-1."""
    qa = dn[:, -1].astype(np.int64)
    optical = dn[:, :7]
    bad = ((qa & 0b11111) != 0) | ((optical <= 7273) | (optical >= 43636)).any(axis=1)
    kelvin = np.clip(dn[:, 7:8] * 0.00341802 + 149.0, 273.15, 373.15)
    out = np.concatenate([optical * 2.75e-5 - 0.2, (kelvin - 273.15) / 100.0], axis=1)
    out[np.broadcast_to(bad[:, None], out.shape)] = np.nan
    return out


@pytest.mark.parametrize("chunked", [False, True])
def test_features_against_numpy(chunked):
    cube = _cube()
    if chunked:
        cube = cube.chunk({"time": 1, "y": 3, "x": 4})
    with raise_if_dask_computes():
        out = collection2_features(cube)
    assert (out.chunks is not None) is chunked
    assert list(out.band.values) == [*OPTICAL_BANDS, "ST_B10"]
    expected = _numpy(_cube().values)
    assert np.isnan(expected).any() and np.isfinite(expected).any()  # both cases are exercised
    np.testing.assert_allclose(out.values, expected, rtol=1e-6, equal_nan=True)
    thermal = out.sel(band="ST_B10").values
    assert np.nanmin(thermal) == 0.0 and np.nanmax(thermal) == 1.0  # clamped at both ends


def test_the_median_composite_matches_numpy():
    cube = _cube(1)
    composite = collection2_features(cube).xf.composite("median")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(_numpy(cube.values), axis=0)
    np.testing.assert_allclose(composite.values, expected, rtol=1e-6, equal_nan=True)


def test_fewer_bands_and_other_bits():
    cube = _cube(2).sel(band=["SR_B4", "SR_B5", "QA_PIXEL"])
    out = collection2_features(
        cube, optical_bands=["SR_B4", "SR_B5"], thermal_bands=[], qa_bits=[3]
    )
    dn = cube.values
    bad = ((dn[:, 2].astype(np.int64) & 8) != 0) | ((dn[:, :2] <= 7273) | (dn[:, :2] >= 43636)).any(
        1
    )
    expected = dn[:, :2] * 2.75e-5 - 0.2
    expected[np.broadcast_to(bad[:, None], expected.shape)] = np.nan
    np.testing.assert_allclose(out.values, expected, rtol=1e-6, equal_nan=True)


def test_bad_input_raises_typed_errors():
    cube = _cube()
    with pytest.raises(BandError, match="ST_B11"):
        collection2_features(cube, thermal_bands=["ST_B11"])
    with pytest.raises(InputError, match="sr_valid_range must be"):
        collection2_features(cube, sr_valid_range=(5.0, 1.0))
    with pytest.raises(InputError, match="at least one optical band"):
        collection2_features(cube, optical_bands=[])
