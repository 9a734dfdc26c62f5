"""A catalogue of user mistakes: each raises the right ``xfusion.errors`` class, names the bad
value and what was expected, and leaves no partial output behind.

The table :data:`MISTAKES` holds the mistakes whose check is a plain call; mistakes in
operations that write (saving a model, writing a catalog, the command line) have their own tests
that also look at the file system. The last section checks how the models treat NaN and ±inf in
their training data (dropped, filled or refused, as documented) and that a diverging loss stops
training.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from affine import Affine

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.cli import main
from xfusion.datasets import write_stac
from xfusion.errors import (
    BandError,
    ConfigError,
    EmptySelectionError,
    GridError,
    InputError,
    MissingFileError,
    ModelError,
    SourceError,
)
from xfusion.models import KernelRidge, Ridge, UNetRegressor, UNetSegmenter
from xfusion.models.predict import predict
from xfusion.recipes import builtup, cloudmask
from xfusion.testing.ee import FakeImage, fake_earth_engine

N = 16  # pixels per side of the test cubes
X0, Y0 = 500000.0, 4000000.0
GRID = xf.grid((X0, Y0, X0 + 10 * N, Y0 + 10 * N), "EPSG:32633", 10)
FAR_GRID = xf.grid((X0 + 1e5, Y0, X0 + 1e5 + 10 * N, Y0 + 10 * N), "EPSG:32633", 10)
COARSE = xf.grid((X0, Y0, X0 + 10 * N, Y0 + 10 * N), "EPSG:32633", 20)
TIMES = ["2020-01-01", "2020-02-01", "2020-03-01"]
TINY = {"widths": (4,), "epochs": 1, "batch_size": 4, "augment": False, "progress": False}


def make_cube(bands=("B02", "B03"), *, times=None, dtype="float32", seed=0, chunk=True):
    """A ``([time,] band, y, x)`` cube on :data:`GRID` with values in [0, 1) (or 0..99)."""
    rng = np.random.default_rng(seed)
    shape = (len(bands), N, N) if times is None else (len(times), len(bands), N, N)
    if np.dtype(dtype).kind == "f":
        data = rng.random(shape).astype(dtype)
    else:
        data = rng.integers(0, 100, shape).astype(dtype)
    return synthetic_cube(
        data, bands, times=times, grid=GRID, chunks={"y": 8, "x": 8} if chunk else None
    )


def no_crs(cube):
    """The cube as a user might build it from numpy: x/y coordinates but no CRS anywhere."""
    plain = xr.DataArray(cube.data, dims=cube.dims, coords={"band": cube.band.values})
    return plain.assign_coords(y=cube.y.values, x=cube.x.values)


def with_fill(cube, value=-9999):
    """An integer cube declaring a fill value, as ``rioxarray.open_rasterio`` returns it."""
    out = cube.astype("int16")
    out.attrs["_FillValue"] = value
    return out


def write_tif(path, count=2, *, crs="EPSG:32633"):
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": count, "dtype": "float32"}
    if crs is not None:
        profile.update(crs=crs, transform=Affine(10, 0, X0, 0, -10, Y0 + 40))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((count, 4, 4), "float32"))
    return path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """Shared inputs: a cube, its numpy patches, fitted tiny models, a folder of files."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    cube = make_cube()
    rng = np.random.default_rng(1)
    X = rng.random((4, 2, 8, 8)).astype("float32")
    unet = UNetRegressor(**TINY).fit(X, X[:, :1] * 2, bands=["B02", "B03"])
    ridge = Ridge().fit(cube, cube.sel(band="B02") + cube.sel(band="B03"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        write_tif(folder / "nocrs.tif", 1, crs=None)
    write_tif(folder / "two.tif")
    (folder / "bad.toml").write_text("seed = = 3\n")
    return {"cube": cube, "X": X, "unet": unet, "ridge": ridge, "dir": folder}


def _ee_open(**kwargs):
    img = FakeImage({"B1": np.arange(N * N, dtype="uint16").reshape(N, N)}, grid=GRID)
    with fake_earth_engine({"TEST/C": [img]}):
        collection = kwargs.pop("collection", "TEST/C")
        return xf.open_ee(collection, grid=kwargs.pop("grid", GRID), **kwargs)


def _fit_unet(X, y, **kwargs):
    return UNetRegressor(**{**TINY, **kwargs}).fit(X, y, bands=["B02", "B03"])


def _segmenter_outside_classes(c):
    X = c["X"][:, :1]
    labels = (X > 0.5).astype("float32")
    bad = labels.copy()
    bad[0, 0, 0, 0] = 3.0
    UNetSegmenter(**TINY).fit(X, labels, validation_data=(X, bad))


def _inf(a, index, value=np.inf):
    a = a.copy()
    a[index] = value
    return a


P = pytest.param
# (call on the shared context, exact error class, patterns: the bad value, what was expected)
MISTAKES = [
    # --- opening -------------------------------------------------------------------------------
    P(lambda c: xf.open_raster(c["dir"] / "nofile.tif"), MissingFileError,
      [r"nofile\.tif", "does not exist"], id="open_raster-missing-file"),
    P(lambda c: xf.open_raster(c["dir"] / "nocrs.tif"), SourceError,
      [r"nocrs\.tif", "has no CRS", "expected a georeferenced raster"], id="open_raster-no-crs"),
    P(lambda c: xf.open_raster(c["dir"] / "two.tif", band_names=["a", "a"]), BandError,
      [r"\['a'\]", "unique"], id="open_raster-duplicate-band-names"),
    P(lambda c: xf.open_raster(c["dir"] / "two.tif", band_names=["a"]), BandError,
      [r"\['a'\]|1 name", "2 bands"], id="open_raster-band-names-count"),
    P(lambda c: xf.open_raster(c["dir"] / "two.tif", grid=FAR_GRID), GridError,
      [r"600000\.0", "does not overlap"], id="open_raster-grid-no-overlap"),
    P(lambda c: xf.open_raster([c["dir"] / "two.tif"] * 2, times=["2020-01-01"]), InputError,
      ["times has 1 entries", "2 files"], id="open_raster-times-count"),
    P(lambda c: xf.open_stac(c["dir"] / "nocatalog" / "catalog.json"), MissingFileError,
      [r"nocatalog", "does not exist"], id="open_stac-missing-catalog"),
    P(lambda c: _ee_open(bands=["B9"]), BandError, [r"'B9'", "not all in 'TEST/C'"],
      id="open_ee-missing-band"),
    P(lambda c: _ee_open(collection="NOPE/MISSING"), SourceError,
      ["NOPE/MISSING", "not found"], id="open_ee-unknown-collection"),
    P(lambda c: _ee_open(start="last tuesday"), InputError,
      ["last tuesday", "a date such as '2020-01-31'"], id="open_ee-bad-date"),
    P(lambda c: _ee_open(grid=(0, 0, 10, 10)), GridError, ["tuple", "expected a grid"],
      id="open_ee-grid-not-a-grid"),
    # --- masking and scaling -------------------------------------------------------------------
    P(lambda c: xf.mask_bits(c["cube"], "QA60", [10, 11]), BandError,
      ["'QA60'", r"bands are \['B02', 'B03'\]"], id="mask_bits-missing-qa-band"),
    P(lambda c: xf.mask_bits(make_cube(("B02", "QA60"), dtype="uint16"), "QA60", [16]),
      InputError, [r"\[16\]", "between 0 and 15"], id="mask_bits-bit-out-of-range"),
    P(lambda c: xf.mask_bits(c["cube"], "B02", "NOPE"), InputError,
      ["'NOPE'", "presets are"], id="mask_bits-unknown-preset"),
    P(lambda c: xf.mask_bits(make_cube(("QA60", "QA60"), dtype="uint16"), "QA60", [10]),
      BandError, [r"\['QA60'\] repeat", "must be unique"], id="mask_bits-duplicate-band-names"),
    P(lambda c: xf.mask_bits(c["cube"].isel(band=0), "B02", [1]), InputError,
      [r"dims are \('y', 'x'\)", "needs a 'band' dimension"], id="mask_bits-missing-band-dim"),
    P(lambda c: xf.mask_range(c["cube"], {"B99": 0}, 1), BandError,
      [r"^lo names band 'B99' not in cube", r"bands are \['B02', 'B03'\]"],
      id="mask_range-unknown-band"),
    P(lambda c: xf.scale(c["cube"], {"B8": 1e-4}), BandError,
      [r"^factor names band 'B8' not in cube", r"bands are \['B02', 'B03'\]"],
      id="scale-unknown-band"),
    P(lambda c: xf.dilate(c["cube"].isel(band=0) > 0.5, -1), InputError,
      ["-1", "non-negative integer"], id="dilate-negative-radius"),
    # --- time ------------------------------------------------------------------------------------
    P(lambda c: xf.composite(c["cube"], "median"), InputError,
      [r"dims are \('band', 'y', 'x'\)", "needs a 'time' dimension"], id="composite-no-time"),
    P(lambda c: xf.composite(make_cube(times=TIMES), "mode"), InputError,
      ["'mode'", "median"], id="composite-unknown-how"),
    P(lambda c: xf.composite(make_cube(times=TIMES), start="2021-01-01"), EmptySelectionError,
      ["2021-01-01", "time range is 2020-01-01"], id="composite-empty-window"),
    P(lambda c: xf.composite(with_fill(make_cube(times=TIMES))), InputError,
      ["int16 with nodata -9999", "needs a float cube with NaN"], id="composite-integer-cube"),
    P(lambda c: xf.lags(make_cube(times=[TIMES[0], TIMES[0], TIMES[1]]), 1), InputError,
      ["2020-01-01T00:00:00 occurs 2 times", "times must be unique"],
      id="lags-duplicate-times"),
    P(lambda c: xf.lags(make_cube(times=TIMES), 5), InputError,
      ["5 lags", "only 3 clear images"], id="lags-more-than-images"),
    # --- features --------------------------------------------------------------------------------
    P(lambda c: xf.standardize(c["cube"], std=0), InputError, ["got 0", "must be positive"],
      id="standardize-zero-std"),
    P(lambda c: xf.standardize(make_cube(("B02", "B02"))), BandError,
      [r"\['B02'\] repeat", "must be unique"], id="standardize-duplicate-band-names"),
    P(lambda c: xf.standardize(with_fill(c["cube"], 0)), InputError,
      ["int16 with nodata 0", "float cube with NaN"], id="standardize-integer-cube"),
    P(lambda c: xf.index(c["cube"], "EVI9"), InputError, ["'EVI9'", "available indices"],
      id="index-unknown"),
    P(lambda c: xf.index(c["cube"], "NDVI"), BandError, ["NDVI", r"\['B02', 'B03'\]"],
      id="index-missing-band"),
    P(lambda c: xf.lbp(c["cube"], points=0), InputError, ["got 0", "integer >= 1"],
      id="lbp-zero-points"),
    P(lambda c: xf.lbp(c["cube"].rename(y="row"), points=8), InputError,
      ["row", "needs 'y' and 'x' dims"], id="lbp-missing-y-dim"),
    # --- resampling and fusion -----------------------------------------------------------------
    P(lambda c: xf.resample(c["cube"], FAR_GRID), GridError,
      [r"600000\.0", "does not overlap"], id="resample-grid-no-overlap"),
    P(lambda c: xf.resample(no_crs(c["cube"]), COARSE), GridError,
      ["no CRS", "expected 'x'/'y' coordinates and a CRS"], id="resample-crs-missing"),
    P(lambda c: xf.resample(c["cube"], COARSE, "lanczos"), InputError,
      ["'lanczos'", "expected one of"], id="resample-unknown-method"),
    P(lambda c: xf.resample(with_fill(c["cube"]), COARSE, "average"), InputError,
      ["int16 with nodata -9999", "float cube with NaN"], id="resample-integer-cube"),
    P(lambda c: xf.fuse({"s2": c["cube"]}, grid=FAR_GRID), GridError,
      [r"600000\.0", "does not overlap"], id="fuse-grid-no-overlap"),
    P(lambda c: xf.fuse({"s2": no_crs(c["cube"])}, grid=GRID), GridError,
      ["no CRS", "a CRS on 'spatial_ref'"], id="fuse-crs-missing"),
    P(lambda c: xf.fuse({"a": make_cube(times=TIMES),
                         "b": make_cube(times=[TIMES[1], TIMES[0], TIMES[2]])}, grid=GRID),
      InputError, ["'b' is not increasing", "expected increasing times"],
      id="fuse-non-monotonic-time"),
    P(lambda c: xf.fuse({"a": make_cube(times=[TIMES[0], TIMES[0], TIMES[1]])}, grid=GRID,
                        align="nearest"),
      InputError, ["2020-01-01T00:00:00 occurs 2 times", "times must be unique"],
      id="fuse-duplicate-times"),
    P(lambda c: xf.fuse({"s2": make_cube(("B02", "B02"))}, grid=GRID), BandError,
      [r"source 's2'.*\['B02'\] repeat", "must be unique"], id="fuse-duplicate-band-names"),
    P(lambda c: xf.fuse({"s2": c["cube"]}, grid=GRID, resampling={"s1": "average"}),
      InputError, ["'s1'", "s2"], id="fuse-resampling-unknown-source"),
    P(lambda c: xf.fuse({}, grid=GRID), InputError, ["sources", "non-empty mapping"],
      id="fuse-no-sources"),
    # --- sampling --------------------------------------------------------------------------------
    P(lambda c: xf.sample(c["cube"], "label", 5), BandError,
      ["'label'", r"bands are \['B02', 'B03'\]"], id="sample-label-band-missing"),
    P(lambda c: xf.sample(c["cube"], xf.resample(c["cube"].isel(band=0), COARSE), 5), GridError,
      ["8x8", "16x16"], id="sample-labels-other-grid"),
    P(lambda c: xf.sample(c["cube"] * np.nan, c["cube"].isel(band=0), 5), EmptySelectionError,
      ["every pixel has NaN", "no valid pixel"], id="sample-all-nan"),
    P(lambda c: xf.sample(make_cube(times=TIMES), "B02", 5), InputError,
      ["'time'", r"dims \('band', 'y', 'x'\)"], id="sample-time-dim"),
    P(lambda c: xf.sample(c["cube"], "B02", 0), InputError, ["got 0", "integer >= 1"],
      id="sample-zero-points"),
    P(lambda c: xf.patches(c["cube"], "B03", size=32, n=2), InputError,
      ["32x32", r"larger than the cube \(16x16"], id="patches-larger-than-cube"),
    P(lambda c: xf.patches(c["cube"], "B08", size=8, n=2), BandError,
      ["'B08'", r"bands are \['B02', 'B03'\]"], id="patches-target-band-missing"),
    P(lambda c: xf.class_balance(pd.DataFrame({"y": [1, 0]})), InputError,
      ["'label'", r"columns are \['y'\]"], id="class_balance-missing-column"),
    # --- training --------------------------------------------------------------------------------
    P(lambda c: UNetRegressor(**{**TINY, "coarse_factor": 5}).fit(
        np.zeros((2, 2, 12, 12), "float32"), np.zeros((2, 1, 12, 12), "float32")),
      InputError, ["12×12", "coarse_factor=5", "multiples of 5"],
      id="unet-patch-not-multiple-of-coarse-factor"),
    P(lambda c: _fit_unet(c["X"].transpose(0, 2, 3, 1), c["X"][:, :1]), InputError,
      ["shape \\(4, 8, 8, 2\\)", "channels-last", r"expected X as \(sample, band, y, x\)"],
      id="unet-wrong-dims-order"),
    P(lambda c: _fit_unet(np.full((4, 2, 8, 8), np.nan, "float32"), c["X"][:, :1]), InputError,
      [r"\['B02', 'B03'\]", "no valid"], id="unet-all-nan-inputs"),
    P(lambda c: _fit_unet(c["X"], np.full((4, 1, 8, 8), np.nan, "float32")), InputError,
      [r"\['prediction'\]", "no valid"], id="unet-all-nan-target"),
    P(lambda c: _fit_unet(_inf(c["X"], (1, 1, 2, 3)), c["X"][:, :1]), InputError,
      [r"\{'B03': 1\}", "expected finite values"], id="unet-inf-input"),
    P(lambda c: _fit_unet(c["X"], _inf(c["X"][:, :1], (0, 0, 0, 0), -np.inf)), InputError,
      [r"target bands .*\{'target': 1\}", "expected finite values"], id="unet-inf-target"),
    P(lambda c: _fit_unet(c["X"], c["X"][:, :1], optimizer="lbfgs"), InputError,
      ["'lbfgs'", "optimizer must be one of"], id="unet-unknown-optimizer"),
    P(_segmenter_outside_classes, InputError,
      [r"labels \[3\.0\]", r"classes \[0\.0, 1\.0\]"], id="segmenter-labels-outside-classes"),
    P(lambda c: UNetSegmenter(**TINY).fit(c["X"][:, :1], np.ones((4, 1, 8, 8))), InputError,
      [r"found \[1\.0\]", "at least two classes"], id="segmenter-one-class"),
    P(lambda c: Ridge().fit(c["cube"] * np.nan, c["cube"].sel(band="B02")), InputError,
      ["every row has a NaN", "at least one row of finite values"], id="ridge-all-nan"),
    P(lambda c: Ridge(alpha=-1).fit(np.ones((3, 2)), np.ones(3)), InputError,
      ["-1", ">= 0"], id="ridge-negative-alpha"),
    P(lambda c: Ridge().fit(np.ones((2, 5)), np.ones(5)), InputError,
      [r"shape \(5,\)", "must have 2 rows like X"], id="ridge-samples-along-wrong-axis"),
    P(lambda c: KernelRidge(method="svd").fit(np.ones((3, 2)), np.ones(3)), InputError,
      ["'svd'", "method must be one of"], id="kernel_ridge-unknown-method"),
    P(lambda c: KernelRidge(gamma=0).fit(np.ones((3, 2)), np.ones(3)), InputError,
      ["got 0", "gamma must be > 0"], id="kernel_ridge-zero-gamma"),
    P(lambda c: KernelRidge(method="exact").fit(np.full((4, 2), np.nan), np.ones(4)), InputError,
      ["every row has a NaN", "finite values"], id="kernel_ridge-all-nan"),
    # --- prediction ------------------------------------------------------------------------------
    P(lambda c: predict(c["cube"].assign_coords(band=["B03", "B05"]), c["unet"]), BandError,
      [r"cube bands \['B03', 'B05'\]", r"training bands \['B02', 'B03'\]", r"missing \['B02'\]"],
      id="predict-model-bands-differ"),
    P(lambda c: predict(make_cube(("B02", "B03", "B04")), c["ridge"]), BandError,
      [r"\['B02', 'B03', 'B04'\]", r"training bands \['B02', 'B03'\]"],
      id="predict-extra-band"),
    P(lambda c: predict(c["cube"], c["unet"], halo=64), InputError,
      ["halo=64", r"larger than the cube \(16×16 px\)"], id="predict-halo-larger-than-cube"),
    P(lambda c: predict(c["cube"], c["unet"], blend="feather"), InputError,
      ["'feather'", "blend must be one of"], id="predict-unknown-blend"),
    P(lambda c: predict(c["cube"], Ridge()), ModelError, ["Ridge", "not fitted"],
      id="predict-unfitted-model"),
    P(lambda c: predict(c["cube"].isel(band=0), c["ridge"]), InputError,
      [r"\('y', 'x'\) lacks \['band'\]", "needs dims"], id="predict-missing-band-dim"),
    P(lambda c: predict(make_cube(("B02", "B02")), c["ridge"]), BandError,
      [r"\['B02'\] repeat", "must be unique"], id="predict-duplicate-band-names"),
    P(lambda c: c["unet"].predict(c["X"][:, :1]), InputError,
      [r"shape \(4, 1, 8, 8\)", r"2 bands \['B02', 'B03'\]"], id="predict-numpy-band-count"),
    # --- loading -------------------------------------------------------------------------------
    P(lambda c: xf.load_model(c["dir"] / "no-model"), ModelError,
      ["no-model", "model.json not found"], id="load_model-missing-path"),
    P(lambda c: xf.load_model(c["dir"]), ModelError,
      ["bad_inputs", "model.json not found"], id="load_model-not-a-model"),
    # --- recipe configurations -----------------------------------------------------------------
    P(lambda c: builtup.Config.from_dict({"n_estimators": 10, "colour": "red"}), ConfigError,
      [r"\['colour'\]", "valid keys are"], id="config-unknown-key"),
    P(lambda c: builtup.Config.from_dict({"seed": "zero"}), ConfigError,
      ["'seed'", "must be an integer", r"\(got 'zero', a str\)"], id="config-wrong-type"),
    P(lambda c: cloudmask.Config.from_dict({"max_lags": 2.5}), ConfigError,
      ["'max_lags'", "2.5", "must be"], id="config-float-for-int"),
    P(lambda c: builtup.Config.from_dict({"source": "ftp"}), ConfigError,
      ["'ftp'", r"source.* must be one of .*'synthetic', 'stac', 'ee'"],
      id="config-unknown-source"),
    P(lambda c: builtup.Config.from_toml(c["dir"] / "missing.toml"), ConfigError,
      [r"missing\.toml", "does not exist"], id="config-file-missing"),
    P(lambda c: builtup.Config.from_toml(c["dir"] / "bad.toml"), ConfigError,
      [r"bad\.toml", "not valid TOML"], id="config-file-not-toml"),
    # --- datasets ------------------------------------------------------------------------------
    P(lambda c: xf.datasets.synthetic_scene("desert"), InputError,
      ["'desert'", "expected one of"], id="synthetic_scene-unknown-recipe"),
    P(lambda c: xf.datasets.synthetic_scene("water", size=8), InputError,
      ["got 8", "integer >= 16"], id="synthetic_scene-too-small"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "error", "patterns"), MISTAKES)
def test_mistake_raises_a_typed_error_naming_value_and_expectation(ctx, call, error, patterns):
    with pytest.raises(error) as info:
        call(ctx)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


def test_the_catalogue_is_large_and_distinct():
    ids = [p.id for p in MISTAKES]
    assert len(ids) == len(set(ids)) >= 40


# ------------------------------------------------------------------------------------------------
# Mistakes in operations that write: nothing is left behind
# ------------------------------------------------------------------------------------------------


def _entries(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def test_saving_an_unfitted_model_writes_nothing(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(ModelError, match=r"UNetRegressor is not fitted yet; call fit"):
        UNetRegressor().save(target)
    assert _entries(tmp_path) == []


def test_saving_in_an_unknown_format_writes_nothing(ctx, tmp_path):
    with pytest.raises(InputError, match=r"fmt must be one of \['msgpack', 'netcdf'\]; got 'pkl'"):
        ctx["ridge"].save(tmp_path / "model", fmt="pkl")
    assert _entries(tmp_path) == []


@pytest.mark.parametrize(
    ("scene", "error", "patterns"),
    [
        P({"a": "cube"}, InputError, [r"scene\['a'\]", "must be an xarray.DataArray"],
          id="not-a-cube"),
        P({"b": make_cube(("B02", "B02"))}, BandError, [r"\['B02'\] repeat", "must be unique"],
          id="duplicate-band-names"),
        P({"c": make_cube(times=[TIMES[0], TIMES[0], TIMES[1]])}, InputError,
          ["2020-01-01T00:00:00 occurs 2 times", "times must be unique"], id="duplicate-times"),
        P({"d": no_crs(make_cube())}, GridError, ["no CRS", "a CRS on 'spatial_ref'"],
          id="crs-missing"),
        P({"e": make_cube().isel(band=0)}, InputError,
          [r"scene\['e'\] has dims \('y', 'x'\)", r"expected \('time', 'band', 'y', 'x'\)"],
          id="missing-band-dim"),
    ],
)  # fmt: skip
def test_a_bad_cube_in_write_stac_writes_nothing(tmp_path, scene, error, patterns):
    # the good cube comes first: it must not be written before the bad one is found
    target = tmp_path / "catalog"
    with pytest.raises(error) as info:
        write_stac({"good": make_cube(chunk=False), **scene}, target)
    assert type(info.value) is error
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), str(info.value)
    assert not target.exists()


@pytest.mark.parametrize(
    ("argv", "patterns"),
    [
        P(["run", "desert"], ["unknown recipe 'desert'", "available recipes are"],
          id="unknown-recipe"),
        P(["run", "cloudmask", "--set", "max_lags"], ["'max_lags'", "--set expects KEY=VALUE"],
          id="set-without-value"),
        P(["run", "cloudmask", "--set", "source=ftp"], ["'ftp'", "source.* must be one of"],
          id="set-unknown-source"),
        P(["run", "cloudmask", "--set", "seed=1.5"], ["'seed'", "1.5", "must be"],
          id="set-wrong-type"),
        P(["run", "cloudmask", "--config", "{tmp}/missing.toml"],
          [r"missing\.toml", "does not exist"], id="config-file-missing"),
        P(["run", "cloudmask", "--config", "{tmp}/bad.toml"], [r"bad\.toml", "not valid TOML"],
          id="config-file-not-toml"),
        P(["run", "cloudmask", "--config", "{tmp}/unknown.toml"],
          [r"\['cloud_cover'\]", "valid keys are"], id="config-file-unknown-key"),
    ],
)  # fmt: skip
def test_cli_mistake_is_one_line_on_stderr_exit_2_and_no_output(tmp_path, capsys, argv, patterns):
    (tmp_path / "bad.toml").write_text("max_lags = = 3\n")
    (tmp_path / "unknown.toml").write_text("[cloudmask]\ncloud_cover = 0.2\n")
    before = _entries(tmp_path)
    out = tmp_path / "out"
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--out", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in captured.err
    for pattern in patterns:
        assert re.search(pattern, err), err
    assert not out.exists() and _entries(tmp_path) == before


@pytest.mark.parametrize(
    "how",
    ["api", "cli-run", "cli-demo"],
)
def test_output_folder_that_is_not_an_xfusion_output_is_refused_untouched(tmp_path, capsys, how):
    foreign = tmp_path / "fieldwork"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("do not delete")
    before = _entries(tmp_path)
    if how == "api":
        with pytest.raises(ConfigError) as info:
            cloudmask.run(cloudmask.Config(out_dir=str(foreign)))
        message = str(info.value)
    else:
        argv = ["run", "cloudmask"] if how == "cli-run" else ["demo", "cloudmask"]
        assert main([*argv, "--out", str(foreign)]) == 2
        message = capsys.readouterr().err
    assert str(foreign) in message and "not an xfusion output" in message
    assert _entries(tmp_path) == before
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_zarr_store_path_that_is_a_file_is_refused_with_nothing_written(tmp_path):
    target = tmp_path / "out.zarr"
    target.write_text("not a store")
    cube = make_cube(("B02",))
    with pytest.raises(ConfigError, match="not a Zarr store written by xfusion") as info:
        xf.write_zarr({"a": cube}, target)
    assert str(target) in str(info.value)
    assert target.read_text() == "not a store"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]


# ------------------------------------------------------------------------------------------------
# NaN and ±inf in training data, and a diverging loss
# ------------------------------------------------------------------------------------------------


def _regression_rows(seed=0, n=60):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = X @ [1.0, -2.0, 0.5] + 0.3 + 0.01 * rng.normal(size=n)
    return X, y


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_ridge_drops_rows_with_nan_or_inf(bad):
    from sklearn.linear_model import Ridge as SkRidge

    X, y = _regression_rows()
    Xd, yd = X.copy(), y.copy()
    Xd[[3, 17], [0, 2]] = bad
    yd[40] = bad
    keep = np.ones(len(y), bool)
    keep[[3, 17, 40]] = False
    ours = Ridge(alpha=0.5).fit(Xd, yd)
    ref = SkRidge(alpha=0.5).fit(X[keep], y[keep])
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-9)
    np.testing.assert_allclose(ours.intercept_, ref.intercept_, rtol=1e-9)


def test_ridge_on_a_cube_drops_pixels_with_nan_or_inf():
    from sklearn.linear_model import Ridge as SkRidge

    cube = make_cube(("B02", "B03"), chunk=False)
    target = cube.sel(band="B02") * 2 - cube.sel(band="B03") + 0.1
    data = cube.values.copy()
    data[0, 2, 3] = np.nan
    data[1, 5, 5] = np.inf
    bad = cube.copy(data=data).chunk({"y": 8, "x": 8})
    ours = Ridge(alpha=0.1).fit(bad, target)
    rows = data.reshape(2, -1).T
    keep = np.isfinite(rows).all(axis=1)
    ref = SkRidge(alpha=0.1).fit(rows[keep], target.values.reshape(-1)[keep])
    assert keep.sum() == N * N - 2
    np.testing.assert_allclose(ours.coef_, ref.coef_, rtol=1e-6)


def test_kernel_ridge_drops_rows_with_nan_or_inf():
    from sklearn.kernel_ridge import KernelRidge as SkKernelRidge

    X, y = _regression_rows(1, 40)
    Xd = X.copy()
    Xd[5, 1], Xd[9, 0] = np.nan, np.inf
    keep = np.ones(len(y), bool)
    keep[[5, 9]] = False
    ours = KernelRidge(alpha=0.1, gamma=0.2, method="exact").fit(Xd, y)
    ref = SkKernelRidge(alpha=0.1, kernel="rbf", gamma=0.2).fit(X[keep], y[keep])
    np.testing.assert_allclose(ours.predict(X[:5]), ref.predict(X[:5]), rtol=1e-6)


def test_unet_fills_nan_inputs_with_the_band_mean_and_ignores_nan_targets(ctx):
    X = ctx["X"].copy()
    X[0, 1, :4, :4] = np.nan  # a cloud in band B03 of one patch
    y = X[:, :1] * 2
    y[2, 0, 3:5, :] = np.nan  # unlabelled pixels
    model = UNetRegressor(**TINY).fit(X, y, bands=["B02", "B03"])
    finite = [X[:, b][np.isfinite(X[:, b])] for b in range(2)]
    np.testing.assert_allclose(model.config_["input_mean"], [f.mean() for f in finite], rtol=1e-5)
    np.testing.assert_allclose(model.config_["input_std"], [f.std() for f in finite], rtol=1e-4)
    assert np.isfinite(model.history_["loss"]).all()
    # the prediction is NaN exactly where an input band is NaN
    pred = model.predict(X)
    np.testing.assert_array_equal(np.isnan(pred[:, 0]), np.isnan(X).any(axis=1))


def test_unet_refuses_inf_in_validation_data(ctx):
    X = ctx["X"]
    with pytest.raises(InputError, match=r"validation input bands .*\{'B02': 2\}.*finite"):
        UNetRegressor(**TINY).fit(
            X,
            X[:, :1],
            validation_data=(_inf(X, (0, 0, slice(0, 2), 0)), X[:, :1]),
            bands=["B02", "B03"],
        )


def test_a_diverging_loss_stops_training_with_model_error_naming_the_epoch(ctx):
    X = ctx["X"]
    with pytest.raises(ModelError, match=r"training loss became (nan|inf) at epoch \d+, step \d+"):
        UNetRegressor(**{**TINY, "epochs": 4, "learning_rate": 1e8}).fit(
            X, X[:, :1] * 100, bands=["B02", "B03"]
        )
