"""Missing sensors: fill with validity bands (lazy) and modality dropout of training patches."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from xfusion.errors import BandError, InputError
from xfusion.models.modality import (
    band_means,
    fill_with_validity,
    modality_dropout,
    sensor_groups,
    training_patches,
)
from xfusion.testing import raise_if_dask_computes

BANDS = ["HH", "HV", "Red", "NIR", "DEM"]
GROUPS = {"sar": ["HH", "HV"], "optical": ["Red", "NIR"]}


def _cube(seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(5, 12, 10)).astype(np.float32)
    values[2:4, :4, :3] = np.nan  # a cloud core: the whole optical missing
    values[3, 8, 8] = np.nan  # one optical band missing at one pixel
    values[0, 11, 0] = np.nan  # a SAR gap
    return xr.DataArray(values, dims=("band", "y", "x"), coords={"band": BANDS})


def test_fill_with_validity_values_and_flags():
    cube = _cube()
    fill = {b: float(i) + 0.5 for i, b in enumerate(BANDS)}
    out = fill_with_validity(cube, GROUPS, fill)
    assert out.band.values.tolist() == [*BANDS, "sar_valid", "optical_valid"]
    raw = cube.values
    got = out.sel(band=BANDS).values
    for i, band in enumerate(BANDS):
        np.testing.assert_array_equal(got[i][np.isnan(raw[i])], fill[band])
        np.testing.assert_array_equal(got[i][~np.isnan(raw[i])], raw[i][~np.isnan(raw[i])])
    optical_ok = ~np.isnan(raw[2:4]).any(axis=0)
    np.testing.assert_array_equal(out.sel(band="optical_valid").values, optical_ok * 1.0)
    sar_ok = ~np.isnan(raw[0:2]).any(axis=0)
    np.testing.assert_array_equal(out.sel(band="sar_valid").values, sar_ok * 1.0)
    assert out.sel(band="optical_valid").values.sum() == 120 - 12 - 1
    assert out.dtype == np.float32


def test_fill_with_validity_is_lazy_and_blockwise_equal():
    cube = _cube()
    fill = band_means(cube)
    lazy_in = cube.copy(data=da.from_array(cube.values, chunks=(5, 6, 5)))
    with raise_if_dask_computes():
        lazy = fill_with_validity(lazy_in, GROUPS, fill)
    assert lazy.chunks is not None and lazy.chunks[0] == (7,)
    np.testing.assert_array_equal(lazy.values, fill_with_validity(cube, GROUPS, fill).values)


def test_band_means_are_the_finite_means():
    cube = _cube()
    means = band_means(cube)
    for i, band in enumerate(BANDS):
        assert means[band] == pytest.approx(float(np.nanmean(cube.values[i].astype(np.float64))))
    with pytest.raises(InputError, match="'HV' has no finite pixel"):
        band_means(cube.where(cube.band != "HV"))


def test_fill_with_validity_errors():
    cube = _cube()
    fill = band_means(cube)
    missing = "sensor group 'optical' names band 'SWIR1' not in cube; bands are "
    with pytest.raises(BandError, match=missing):
        fill_with_validity(cube, {"optical": ["Red", "SWIR1"]}, fill)
    with pytest.raises(InputError, match=r"no fill value for bands \['DEM'\]"):
        fill_with_validity(cube, GROUPS, {b: 0.0 for b in BANDS[:4]})
    with pytest.raises(InputError, match="group 'sar' has no bands"):
        fill_with_validity(cube, {"sar": []}, fill)
    flagged = fill_with_validity(cube, GROUPS, fill)
    with pytest.raises(BandError, match="already has a band 'sar_valid'"):
        fill_with_validity(flagged, GROUPS, {**fill, "sar_valid": 1.0, "optical_valid": 1.0})


def test_modality_dropout_copies_each_group_missing():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5, 8, 8)).astype(np.float32)
    x[1, 2:4, :2, :2] = np.nan
    inputs = xr.DataArray(x, dims=("sample", "band", "y", "x"), coords={"band": BANDS})
    target = xr.DataArray((x[:, 0] > 0).astype(np.float32), dims=("sample", "y", "x"))
    coords = {"row": ("sample", [0, 8, 16]), "col": ("sample", [4, 4, 4])}
    patches = xr.Dataset({"inputs": inputs, "target": target}, coords=coords)
    fill = band_means(inputs)
    out = modality_dropout(patches, GROUPS, fill)
    assert out.sizes["sample"] == 9
    assert out["inputs"].band.values.tolist() == [*BANDS, "sar_valid", "optical_valid"]
    np.testing.assert_array_equal(out["row"].values, [0, 8, 16] * 3)
    np.testing.assert_array_equal(out["target"].values, np.concatenate([target.values] * 3))
    got = out["inputs"].values
    np.testing.assert_array_equal(got[:3], fill_with_validity(inputs, GROUPS, fill).values)
    no_sar, no_optical = got[3:6], got[6:9]
    np.testing.assert_array_equal(no_sar[:, 0], np.float32(fill["HH"]))
    np.testing.assert_array_equal(no_sar[:, 1], np.float32(fill["HV"]))
    np.testing.assert_array_equal(no_sar[:, 5], 0.0)  # sar_valid
    np.testing.assert_array_equal(no_sar[:, 2:5], got[:3, 2:5])  # optical and DEM kept
    np.testing.assert_array_equal(no_optical[:, 2], np.float32(fill["Red"]))
    np.testing.assert_array_equal(no_optical[:, 6], 0.0)  # optical_valid
    np.testing.assert_array_equal(no_optical[:, [0, 1, 4, 5]], got[:3, [0, 1, 4, 5]])
    assert not np.isnan(got).any()
    with pytest.raises(InputError, match="no 'pixels' variable"):
        modality_dropout(patches, GROUPS, fill, inputs="pixels")


def test_sensor_groups_keep_the_model_bands():
    groups = {"sar": ["HH", "HV"], "optical": ["Red", "NIR", "SWIR1"]}
    assert sensor_groups(groups, ["HH", "HV", "DEM"]) == {"sar": ["HH", "HV"]}
    assert sensor_groups(groups, ["NIR", "HV", "Red"]) == {"sar": ["HV"], "optical": ["Red", "NIR"]}
    assert sensor_groups(groups, ["DEM"]) == {}


def test_training_patches_with_and_without_dropout():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 8, 8)).astype(np.float32)
    x[0, 2, :3, :3] = np.nan  # a cloud over one optical band
    inputs = xr.DataArray(x, dims=("sample", "band", "y", "x"), coords={"band": BANDS})
    target = xr.DataArray((x[:, 0] > 0).astype(np.float32), dims=("sample", "y", "x"))
    patches = xr.Dataset({"inputs": inputs, "target": target})
    fill = band_means(inputs)
    once = training_patches(patches, GROUPS, fill)
    assert once.sizes["sample"] == 2
    np.testing.assert_array_equal(
        once["inputs"].values, fill_with_validity(inputs, GROUPS, fill).values
    )
    np.testing.assert_array_equal(once["target"].values, target.values)
    assert once["inputs"].sel(band="optical_valid").values[0, :3, :3].tolist() == [[0.0] * 3] * 3
    dropped = training_patches(patches, GROUPS, fill, dropout=True)
    expected = modality_dropout(patches, GROUPS, fill)
    np.testing.assert_array_equal(dropped["inputs"].values, expected["inputs"].values)
    assert dropped.sizes["sample"] == 6
    # one group: nothing to drop, the patches once
    sar = training_patches(patches, {"sar": ["HH", "HV"]}, fill, dropout=True)
    assert sar.sizes["sample"] == 2 and sar["inputs"].band.values.tolist()[-1] == "sar_valid"
    with pytest.raises(InputError, match="no 'pixels' variable"):
        training_patches(patches, GROUPS, fill, inputs="pixels")
