from __future__ import annotations

import warnings

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from sklearn.preprocessing import StandardScaler

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.errors import BandError, InputError
from xfusion.preprocess.features import index, standardize
from xfusion.testing import raise_if_dask_computes

CHUNKINGS = [None, {"time": 1, "y": 3, "x": 4}]


def _cube(seed=0, bands=("B02", "B03", "B04", "B08", "B11"), shape=(3, 7, 6), nan_fraction=0.1):
    rng = np.random.default_rng(seed)
    data = (rng.random((shape[0], len(bands), *shape[1:])) * 0.5 + 0.01).astype("float32")
    data[rng.random(data.shape) < nan_fraction] = np.nan
    names = [f"name{i}" for i in range(len(bands))]
    return synthetic_cube(data, bands, coords={"common_name": ("band", names)})


def _maybe_chunk(da, chunks):
    return da if chunks is None else da.chunk(chunks)


def _pixels(cube):
    """(pixels, bands) table, the layout scikit-learn expects."""
    return cube.transpose("time", "y", "x", "band").values.reshape(-1, cube.sizes["band"])


def _from_pixels(table, cube):
    t, y, x = (cube.sizes[d] for d in ("time", "y", "x"))
    return table.reshape(t, y, x, -1).transpose(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# standardize


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_standardize_own_statistics_match_sklearn(chunks):
    cube = _cube()
    x = _maybe_chunk(cube, chunks)
    with raise_if_dask_computes():
        out = standardize(x)
    assert isinstance(out.data, dsa.Array) == (chunks is not None)
    assert out.dtype == np.float32 and out.dims == cube.dims
    expected = _from_pixels(StandardScaler().fit_transform(_pixels(cube)), cube)
    np.testing.assert_allclose(out.values, expected, rtol=1e-5, atol=1e-5)
    xr.testing.assert_equal(out.band, cube.band)


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_standardize_with_reference_cube(chunks):
    """Standardise one period with the statistics of another (2019 with 2015's)."""
    reference, target = _cube(seed=1), _cube(seed=2, shape=(2, 5, 4))
    reference = reference * 3 + 1
    ref_x, target_x = _maybe_chunk(reference, chunks), _maybe_chunk(target, chunks)
    with raise_if_dask_computes():
        out = standardize(target_x, mean=ref_x)
        out_std_only = standardize(target_x, std=ref_x)
    scaler = StandardScaler().fit(_pixels(reference))
    expected = _from_pixels(scaler.transform(_pixels(target)), target)
    np.testing.assert_allclose(out.values, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_std_only.values, expected, rtol=1e-5, atol=1e-5)
    # the reference may hold its bands in another order and have extra bands
    shuffled = reference.isel(band=[4, 2, 0, 3, 1])
    np.testing.assert_allclose(standardize(target, mean=shuffled).values, expected, rtol=1e-5)


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_standardize_given_values(chunks):
    cube = _cube(bands=("red", "nir"))
    x = _maybe_chunk(cube, chunks)
    v = cube.values
    with raise_if_dask_computes():
        numbers = standardize(x, 0.2, 0.1)
        by_band = standardize(x, {"red": 0.1, "nir": 0.3}, {"nir": 2.0, "red": 4.0})
        as_array = standardize(
            x,
            xr.DataArray([0.3, 0.1], dims="band", coords={"band": ["nir", "red"]}),
            xr.DataArray([2.0, 4.0], dims="band", coords={"band": ["nir", "red"]}),
        )
        mixed = standardize(x, mean=0.0)  # std from the cube itself
    np.testing.assert_allclose(numbers.values, (v - 0.2) / 0.1, rtol=1e-5)
    expected = (v - np.array([0.1, 0.3])[:, None, None]) / np.array([4.0, 2.0])[:, None, None]
    np.testing.assert_allclose(by_band.values, expected, rtol=1e-5)
    np.testing.assert_allclose(as_array.values, expected, rtol=1e-5)
    std = np.nanstd(v, axis=(0, 2, 3))
    np.testing.assert_allclose(mixed.values, v / std[:, None, None], rtol=1e-5)


def test_standardize_constant_band_and_no_band():
    cube = _cube(bands=("a", "b"), nan_fraction=0)
    cube.loc[{"band": "b"}] = 7.0
    out = standardize(cube.chunk({"y": 2}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = out.values
    # like scikit-learn: a constant feature is centred, not divided by zero
    expected = _from_pixels(StandardScaler().fit_transform(_pixels(cube)), cube)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    single = cube.sel(band="a")
    a = single.values
    np.testing.assert_allclose(
        standardize(single).values, (a - a.mean()) / a.std(), rtol=1e-5, atol=1e-5
    )


def test_standardize_errors():
    cube = _cube(bands=("red", "nir"))
    with pytest.raises(BandError, match=r"mean has no value for bands \['nir'\]"):
        standardize(cube, {"red": 0.1})
    with pytest.raises(
        BandError, match=r"^band 'nir' not in the cube for mean; bands are \['red'\]"
    ):
        standardize(cube, mean=cube.sel(band=["red"]))
    with pytest.raises(BandError, match=r"std has no value for bands \['red'\]"):
        standardize(cube, std=xr.DataArray([1.0], dims="band", coords={"band": ["nir"]}))
    with pytest.raises(InputError, match="std must be positive"):
        standardize(cube, std=0)
    with pytest.raises(InputError, match="std must be positive for every band"):
        standardize(cube, std={"red": 1.0, "nir": -1.0})
    with pytest.raises(InputError, match="got str"):
        standardize(cube, mean="2015")
    with pytest.raises(InputError, match="no 'band' dimension"):
        standardize(cube.sel(band="red"), mean={"red": 1.0})


# ---------------------------------------------------------------------------------------------
# index


def _nd(a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a - b) / (a + b)


@pytest.mark.parametrize("chunks", CHUNKINGS)
@pytest.mark.parametrize(
    "names",
    [
        {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "swir1": "B11"},
        {"blue": "B2", "green": "B3", "red": "B4", "nir": "B8", "swir1": "B11"},
        {"blue": "SR_B2", "green": "SR_B3", "red": "SR_B4", "nir": "SR_B5", "swir1": "SR_B6"},
        {"blue": "blue", "green": "green", "red": "red", "nir": "nir", "swir1": "swir1"},
        {"blue": "s2:B02", "green": "s2:B03", "red": "s2:B04", "nir": "s2:B08", "swir1": "s2:B11"},
    ],
)
def test_indices_match_numpy(chunks, names):
    cube = _maybe_chunk(_cube(bands=tuple(names.values())), chunks)
    b = {common: cube.sel(band=band).values for common, band in names.items()}
    with raise_if_dask_computes():
        out = index(cube, ["ndvi", "NDWI", "MNDWI", "NDBI", "NIRv"])
    assert isinstance(out.data, dsa.Array) == (chunks is not None)
    assert list(out.band.values) == ["NDVI", "NDWI", "MNDWI", "NDBI", "NIRv"]
    assert out.dims == cube.dims and out.dtype == np.float32
    expected = {
        "NDVI": _nd(b["nir"], b["red"]),
        "NDWI": _nd(b["green"], b["nir"]),
        "MNDWI": _nd(b["green"], b["swir1"]),
        "NDBI": _nd(b["swir1"], b["nir"]),
        "NIRv": _nd(b["nir"], b["red"]) * b["nir"],
    }
    for name, values in expected.items():
        np.testing.assert_allclose(out.sel(band=name).values, values, rtol=1e-5)


def test_index_concatenates_to_cube_and_zero_denominator():
    cube = _cube(bands=("B04", "B08"), nan_fraction=0)
    cube.loc[{"band": ["B04", "B08"], "y": 0}] = 0.0
    ndvi = index(cube.chunk({"y": 3}), "NDVI")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = ndvi.values
    assert np.isnan(values[:, 0, 0]).all()
    assert np.isfinite(values[:, 0, 1:]).all()
    b = cube.values
    np.testing.assert_allclose(values[:, 0, 1:], _nd(b[:, 1], b[:, 0])[:, 1:], rtol=1e-5)
    both = xr.concat([cube.drop_vars("common_name"), ndvi], dim="band")
    assert list(both.band.values) == ["B04", "B08", "NDVI"]
    np.testing.assert_allclose(both.sel(band="NDVI").values, values[:, 0])
    time_less = index(cube.isel(time=0), "ndvi")
    assert time_less.dims == ("band", "y", "x")


def test_index_errors():
    cube = _cube(bands=("B02", "B03", "B04"))
    with pytest.raises(
        BandError, match=r"NDVI needs a nir band .*bands are \['B02', 'B03', 'B04'\]"
    ):
        index(cube, "NDVI")
    with pytest.raises(InputError, match="unknown index 'EVI9'; available indices are"):
        index(cube, ["NDWI", "EVI9"])
    with pytest.raises(InputError, match="'band' dimension"):
        index(cube.sel(band="B02"), "NDVI")
    fused = _cube(bands=("s2:B04", "s2:B08", "landsat:SR_B5"))
    with pytest.raises(BandError, match="several match"):
        index(fused, "NDVI")


def test_accessor_delegates():
    cube = _cube(bands=("B03", "B04", "B08", "B11")).chunk({"y": 3})
    xr.testing.assert_identical(cube.xf.standardize(), xf.standardize(cube))
    ref = cube.isel(time=0)
    xr.testing.assert_identical(cube.xf.standardize(ref, None), xf.standardize(cube, ref, None))
    xr.testing.assert_identical(cube.xf.index(["NDVI", "NDBI"]), xf.index(cube, ["NDVI", "NDBI"]))


# --- indices refuse bands whose kind or recorded scaling makes them wrong ----------------------


def _landsat_dn(seed=0, shape=(4, 5)):
    """Raw Collection-2 DN for red and nir, and the physical reflectances they stand for."""
    rng = np.random.default_rng(seed)
    dn = rng.integers(8000, 30000, size=(2, *shape)).astype("float32")
    cube = xr.DataArray(dn, dims=("band", "y", "x"), coords={"band": ["SR_B4", "SR_B5"]})
    return cube, dn * 2.75e-5 - 0.2


def test_index_refuses_raw_landsat_c2_numbers_recorded_as_raw():
    cube, _ = _landsat_dn()
    raw = xf.bands.set_band_scaling(cube, {"SR_B4": (1.0, 0.0), "SR_B5": (1.0, 0.0)})
    with pytest.raises(InputError, match=r"raw Landsat Collection-2.*LANDSAT_C2_SR"):
        index(raw, "NDVI")
    # the raw-DN ratio is not the index: the check guards against a real error
    physical = xf.bands.set_band_scaling(
        cube * 2.75e-5 - 0.2, {"SR_B4": (2.75e-5, -0.2), "SR_B5": (2.75e-5, -0.2)}
    )
    _, refl = _landsat_dn()
    want = (refl[1] - refl[0]) / (refl[1] + refl[0])
    np.testing.assert_allclose(index(physical, "NDVI").values[0], want, rtol=1e-5)
    raw_ratio = (cube.values[1] - cube.values[0]) / (cube.values[1] + cube.values[0])
    assert np.abs(raw_ratio - want).max() > 0.05


def test_index_refuses_bands_on_different_scales():
    cube, _ = _landsat_dn()
    mixed = xf.bands.set_band_scaling(cube, {"SR_B4": (2.75e-5, -0.2), "SR_B5": (1.0, 0.0)})
    with pytest.raises(InputError, match=r"different scales.*'SR_B5'.*'SR_B4'"):
        index(mixed, "NDVI")


def test_index_refuses_a_flag_band():
    cube = _cube(bands=("B04", "B08"))
    flagged = xf.bands.set_band_kinds(cube, {"B08": "flags"})
    with pytest.raises(BandError, match=r"continuous nir band.*'B08' is a flags band"):
        index(flagged, "NDVI")
    # unknown scaling (no coordinates) and continuous kinds: unchanged behaviour
    assert index(cube, "NDVI").sizes["band"] == 1
