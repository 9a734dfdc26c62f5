"""xfusion.validate: one grammar for chunks, one band check, one halo rule, used by every layer."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from affine import Affine

import xfusion as xf
from xfusion.errors import BandError, InputError
from xfusion.models import UNetRegressor
from xfusion.testing import raise_if_dask_computes
from xfusion.validate import check_halo, normalize_chunks, require_bands

EPSG = 32633
TRANSFORM = Affine(10, 0, 500000, 0, -10, 4000320)
DIMS = ("time", "band", "y", "x")


def _tif(path, data):
    profile = {
        "driver": "GTiff",
        "count": 1,
        "height": data.shape[0],
        "width": data.shape[1],
        "dtype": data.dtype.name,
        "crs": f"EPSG:{EPSG}",
        "transform": TRANSFORM,
        "tiled": True,
        "blockxsize": 16,
        "blockysize": 16,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[np.newaxis])
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two 32 × 32 one-band GeoTIFFs and the STAC items holding them (two times, two assets)."""
    root = tmp_path_factory.mktemp("validate")
    rng = np.random.default_rng(3)
    paths, items = [], []
    for i in range(2):
        item = pystac.Item(f"i{i}", None, [15, 36, 16, 37], dt.datetime(2020, 1, 1 + i), {})
        for band in ("a", "b"):
            path = _tif(root / f"{band}{i}.tif", rng.uniform(0, 1, (32, 32)).astype("float32"))
            paths.append(path)
            fields = {"proj:epsg": EPSG, "proj:shape": [32, 32]}
            fields["proj:transform"] = list(TRANSFORM)[:6]
            item.add_asset(band, pystac.Asset(path, media_type="image/tiff", extra_fields=fields))
        items.append(item)
    return paths[:2], items


# --- normalize_chunks: the grammar ------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        (None, {}),
        ("auto", {}),
        (8, {"y": 8, "x": 8}),
        (np.int64(8), {"y": 8, "x": 8}),
        (8.0, {"y": 8, "x": 8}),
        ((8, 16), {"y": 8, "x": 16}),
        ([8, 16], {"y": 8, "x": 16}),
        ((1, -1, 8, 16), {"time": 1, "band": -1, "y": 8, "x": 16}),
        ((None, "auto", 8, 8), {"time": -1, "y": 8, "x": 8}),
        ({"time": None, "y": 8}, {"time": -1, "y": 8}),
        ({"x": "auto", "band": 1}, {"band": 1}),
        (-1, {"y": -1, "x": -1}),
    ],
)
def test_normalize_chunks_accepted_forms(chunks, expected):
    assert normalize_chunks(chunks, DIMS, "chunks") == expected


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ("big", r"open_x chunks must be an int \(the y and x chunk\), \(y, x\).*got 'big'"),
        (
            (1, 2, 3),
            r"open_x chunks must be .*a tuple \('time', 'band', 'y', 'x'\).*got \(1, 2, 3\)",
        ),
        ({"z": 4, "y": 8}, r"open_x chunks names unknown dims \['z'\]; dims are \['time', 'band'"),
        ({"y": 0}, r"open_x chunks: the chunk size for 'y' must be a positive int, -1 or None"),
        ((8, -2), r"chunk size for 'x' must be .*; got -2"),
        (2.5, r"chunk size for 'y' must be .*; got 2.5"),
        (True, r"open_x chunks must be .*; got True"),
        ({"y": "8"}, r"chunk size for 'y' must be .*; got '8'"),
        (object(), r"open_x chunks must be an int"),
    ],
)
def test_normalize_chunks_rejected_forms_name_the_argument_and_the_forms(chunks, message):
    with pytest.raises(InputError, match=message):
        normalize_chunks(chunks, DIMS, "open_x chunks")


def test_normalize_chunks_of_two_dims_takes_no_longer_tuple():
    assert normalize_chunks((4, 6), ("y", "x")) == {"y": 4, "x": 6}
    with pytest.raises(
        InputError, match=r"chunks must be an int \(the y and x chunk\), \(y, x\), "
    ):
        normalize_chunks((1, 4, 6), ("y", "x"))


# --- the same forms through the openers and resample ------------------------------------------

# every form of the grammar, with the chunks it gives (the forms accepted before give what they
# gave before: the defaults are the openers' own)
STAC_FORMS = [
    (None, ((2,), (1, 1), (32,), (32,))),  # default: time -1, band 1, 512 × 512
    ("auto", ((2,), (1, 1), (32,), (32,))),
    (16, ((2,), (1, 1), (16, 16), (16, 16))),
    ((16, 8), ((2,), (1, 1), (16, 16), (8,) * 4)),
    ([16, 8], ((2,), (1, 1), (16, 16), (8,) * 4)),
    ((1, 2, 16, 16), ((1, 1), (2,), (16, 16), (16, 16))),
    ({"time": 1, "y": 16}, ((1, 1), (1, 1), (16, 16), (32,))),
    ({"band": -1, "x": None, "y": "auto"}, ((2,), (2,), (32,), (32,))),
]


@pytest.mark.parametrize(("chunks", "expected"), STAC_FORMS)
def test_open_stac_chunk_forms(files, chunks, expected):
    _, items = files
    reference = xf.open_stac(items)
    with raise_if_dask_computes():
        cube = xf.open_stac(items, chunks=chunks)
    assert cube.chunks == expected
    np.testing.assert_array_equal(cube.values, reference.values)


RASTER_FORMS = [  # one band per file: each file is its own band chunk whatever "band" says
    (None, ((1, 1), (32,), (32,))),  # default: band 1, 1024 × 1024
    ("auto", ((1, 1), (32,), (32,))),
    (16, ((1, 1), (16, 16), (16, 16))),
    ((16, 8), ((1, 1), (16, 16), (8,) * 4)),
    ((1, 2, 16, 16), ((1, 1), (16, 16), (16, 16))),
    ({"band": 2, "y": 8}, ((1, 1), (8,) * 4, (32,))),
    ({"band": -1, "x": None}, ((1, 1), (32,), (32,))),
]


@pytest.mark.parametrize(("chunks", "expected"), RASTER_FORMS)
def test_open_raster_chunk_forms(files, chunks, expected):
    paths, _ = files
    reference = xf.open_raster(paths)
    with raise_if_dask_computes():
        cube = xf.open_raster(paths, chunks=chunks)
    assert cube.chunks == expected
    np.testing.assert_array_equal(cube.values, reference.values)


RESAMPLE_FORMS = [
    (8, ((1, 1), (8, 8), (8, 8))),
    ((8, 4), ((1, 1), (8, 8), (4,) * 4)),
    ({"y": 8, "x": 16}, ((1, 1), (8, 8), (16,))),
    ({"y": -1, "x": 4}, ((1, 1), (16,), (4,) * 4)),
    ((None, 8), ((1, 1), (16,), (8, 8))),
]


@pytest.mark.parametrize(("chunks", "expected"), RESAMPLE_FORMS)
def test_resample_chunk_forms(files, chunks, expected):
    paths, _ = files
    cube = xf.open_raster(paths, chunks=16)
    coarse = xf.grid((500000, 4000000, 500320, 4000320), f"EPSG:{EPSG}", 20)
    reference = xf.resample(cube, coarse, "average")
    with raise_if_dask_computes():
        out = xf.resample(cube, coarse, "average", chunks=chunks)
    assert out.chunks == expected
    np.testing.assert_array_equal(out.values, reference.values)
    # "auto" and None choose the same chunks; a side left out is chosen as with None
    assert xf.resample(cube, coarse, "average", chunks="auto").chunks == reference.chunks


BAD = [((1, 2, 3), r"\(1, 2, 3\)"), ({"z": 4}, r"unknown dims \['z'\]"), ({"y": 0}, "'y'")]


@pytest.mark.parametrize(("chunks", "message"), BAD)
def test_every_layer_refuses_a_bad_chunks_form_with_the_same_error(files, chunks, message):
    paths, items = files
    cube = xf.open_raster(paths)
    grid = xf.grid((500000, 4000000, 500320, 4000320), f"EPSG:{EPSG}", 20)
    calls = {
        "open_stac": lambda: xf.open_stac(items, chunks=chunks),
        "open_raster": lambda: xf.open_raster(paths, chunks=chunks),
        "open_ee": lambda: xf.open_ee("S2", grid=grid, chunks=chunks),
        "resample": lambda: xf.resample(cube, grid, "average", chunks=chunks),
    }
    for name, call in calls.items():
        if name == "resample" and "z" in str(chunks):
            message_here = r"unknown dims \['z'\]; dims are \['y', 'x'\]"
        else:
            message_here = message
        with pytest.raises(InputError, match=rf"^{name} chunks.*{message_here}"):
            call()


# --- require_bands ----------------------------------------------------------------------------


def test_require_bands_names_the_missing_bands_and_the_cube_bands():
    cube = xr.DataArray(
        np.zeros((3, 2, 2)), dims=("band", "y", "x"), coords={"band": ["B02", "B03", "QA"]}
    ).chunk()
    with raise_if_dask_computes():
        assert require_bands(cube, ["QA", "B02"]) == ["B02", "B03", "QA"]
        with pytest.raises(BandError, match=r"^bands \['B08', 'B11'\] not in Landsat cube; "):
            require_bands(cube, ["B02", "B08", "B11"], "Landsat cube")
        with pytest.raises(
            BandError,
            match=r"^quality band 'QA60' not in cube; bands are \['B02', 'B03', 'QA'\]; "
            r"did you mean 'QA'\?$",
        ):
            require_bands(cube, "QA60", role="quality")
    with pytest.raises(BandError, match=r"without a band coordinate; its dims are \['y', 'x'\]"):
        require_bands(cube.isel(band=0, drop=True), ["B02"])


def test_require_bands_hints_the_band_meant_and_takes_plain_names():
    cube = xr.DataArray(
        np.zeros((3, 1, 1)), dims=("band", "y", "x"), coords={"band": ["B02", "B08", "smod"]}
    )
    with pytest.raises(
        BandError, match=r"^band 'B8' not in cube; bands are \[.*\]; did you mean 'B08'\?$"
    ):
        require_bands(cube, ["B02", "B8"])
    with pytest.raises(BandError, match=r"; did you mean 'smod' for 'SMOD', 'B02' for 'b02'\?$"):
        require_bands(cube, ["SMOD", "b02"])
    with pytest.raises(BandError, match=r"^band 'cloud' not in cube; bands are \[.*\]$"):
        require_bands(cube, "cloud")  # nothing close: no hint
    # the names themselves (a pixel table's columns) instead of a cube; a mapping by its keys
    assert require_bands(["a", "b"], {"b": 1}) == ["a", "b"]
    with pytest.raises(
        BandError, match=r"^kinds names band 'c' not in table; bands are \['a', 'b'\]$"
    ):
        require_bands(("a", "b"), {"c": "flags"}, "table", by="kinds")


def _band_cube():
    """A 2-band (a, b) float cube on a UTM grid, and a Ridge model fitted on its two bands."""
    from xfusion.models import Ridge

    cube = xr.DataArray(
        np.random.default_rng(0).uniform(0, 1, (2, 8, 8)).astype("float32"),
        dims=("band", "y", "x"),
        coords={
            "band": ["a", "b"],
            "y": 4000320 - 10 * np.arange(8.0),
            "x": 500000 + 10 * np.arange(8.0),
        },
    ).rio.write_crs(EPSG)
    rng = np.random.default_rng(1)
    model = Ridge().fit(rng.normal(size=(20, 2)), rng.normal(size=20))
    return cube, model


def _missing_band_calls():
    import pandas as pd

    from xfusion.bands import set_band_kinds, set_band_scaling
    from xfusion.models.baselines import fit_baselines
    from xfusion.models.predict import predict

    cube, model = _band_cube()
    table = pd.DataFrame({"a": [0.0, 1.0, 0.2, 0.9], "b": [1.0, 0.0, 0.8, 0.1]})
    coarse = xf.grids.geobox_of(cube).zoom_out(2)
    return {
        "rgb_array": (lambda: xf.viz.rgb_array(cube.isel(band=[0, 1, 1]), ["a", "nope", "b"]), ""),
        "plot_bands": (lambda: xf.viz.plot_bands(cube, ["nope"]), ""),
        "predict": (lambda: predict(cube, model, bands=["a", "nope"]), "bands names "),
        "resample": (lambda: xf.resample(cube, coarse, {"nope": "mode"}), "resampling names "),
        "mask_range": (lambda: xf.mask_range(cube, {"nope": 1.0}, None), "lo names "),
        "mask_bits": (lambda: xf.mask_bits(cube, "nope", [0]), "quality "),
        "set_band_kinds": (lambda: set_band_kinds(cube, {"nope": "flags"}), "band kinds names "),
        "set_band_scaling": (lambda: set_band_scaling(cube, {"nope": None}), "band scaling names "),
        "fit_baselines": (
            lambda: fit_baselines("segmentation", table, [0, 1, 0, 1], index_band="nope"),
            "index_band names ",
        ),
    }


@pytest.mark.parametrize("caller", list(_missing_band_calls()))
def test_every_layer_says_band_not_in_cube_the_same_way(caller):
    call, prefix = _missing_band_calls()[caller]
    with pytest.raises(
        BandError, match=rf"^{prefix}band 'nope' not in [\w ()]+; bands are \['a', 'b'"
    ):
        call()


# --- write_zarr / open_zarr chunks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        (None, ((2,), (6,), (4,))),
        (3, ((2,), (3, 3), (3, 1))),
        ((4, 2), ((2,), (4, 2), (2, 2))),
        ({"band": 1, "x": -1}, ((1, 1), (6,), (4,))),
        ({"y": None, "x": "auto"}, ((2,), (6,), (4,))),
        ({"y": 5.0}, ((2,), (5, 1), (4,))),
    ],
)
def test_write_zarr_chunk_forms(tmp_path, chunks, expected):
    cube = xr.DataArray(np.arange(48.0).reshape(2, 6, 4), dims=("band", "y", "x"))
    table = xr.DataArray(np.arange(5.0), dims="sample")  # has none of the dims: left as it is
    store = xf.write_zarr({"c": cube, "t": table}, tmp_path / "o.zarr", chunks=chunks)
    back = xf.open_zarr(store)
    assert back["c"].chunks == expected and back["t"].chunks == ((5,),)
    np.testing.assert_array_equal(back["c"].values, cube.values)
    assert xf.open_zarr(store, "c", chunks=(3, -1)).chunks == (expected[0], (3, 3), (4,))


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ({"y": 0}, r"the chunk size for 'y' must be a positive int"),
        ({"time": 2}, r"names unknown dims \['time'\]; dims are \['band', 'sample', 'y', 'x'\]"),
        ((1, 2, 3), r"must be an int \(the y and x chunk\), \(y, x\)"),
        ("big", r"must be an int"),
    ],
)
def test_write_zarr_refuses_a_bad_chunks_form_before_writing(tmp_path, chunks, message):
    cube = xr.DataArray(np.zeros((2, 6, 4)), dims=("band", "y", "x"))
    table = xr.DataArray(np.arange(5.0), dims="sample")
    with pytest.raises(InputError, match=rf"^write_zarr chunks.*{message}"):
        xf.write_zarr({"c": cube, "t": table}, tmp_path / "o.zarr", chunks=chunks)
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial store


def test_recipes_import_the_same_require_bands():
    from xfusion.recipes import _sources

    assert _sources.require_bands is require_bands


# --- halo -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"halo": 8, "multiple": 4}, 8),
        ({"halo": 0, "multiple": 4}, 0),
        ({"halo": np.int32(16), "multiple": 16}, 16),
        ({"halo": 10, "multiple": 4, "round_up": True}, 12),
        ({"halo": 8.0, "multiple": 8}, 8),
    ],
)
def test_check_halo_accepts(kwargs, expected):
    assert check_halo(**kwargs) == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"halo": 10, "multiple": 4},
            r"halo must be a multiple of 4 \(2\*\*depth\); got 10, e.g. 12",
        ),
        ({"halo": -4, "multiple": 4}, r"halo must be >= 0 pixels; got -4"),
        ({"halo": 2.5}, r"halo must be a whole number of pixels >= 0; got 2.5"),
        ({"halo": "8"}, r"halo must be a whole number of pixels >= 0; got '8'"),
        ({"halo": 64, "shape": (16, 16)}, r"halo=64 px is larger than the cube \(16×16 px\)"),
    ],
)
def test_check_halo_refuses(kwargs, message):
    with pytest.raises(InputError, match=message):
        check_halo(**kwargs)


@pytest.mark.parametrize(("halo", "message"), [(6, "multiple of 4"), (-4, ">= 0"), (2.5, "whole")])
def test_unet_refuses_a_bad_halo_before_any_training_step(halo, message):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 2, 16, 16)).astype("float32")
    y = rng.normal(size=(8, 16, 16)).astype("float32")
    model = UNetRegressor(widths=(4, 8), epochs=50, halo=halo, progress=False)
    start = time.perf_counter()
    with pytest.raises(InputError, match=rf"^halo .*{message}"):
        model.fit(X, y)
    assert time.perf_counter() - start < 1.0  # fifty epochs would take many seconds
    assert not hasattr(model, "params_") and not hasattr(model, "history_")


def test_predict_rounds_a_halo_up_by_the_same_rule():
    from xfusion.models.predict import _spatial_plan

    class Spatial:
        tile_multiple_ = 4
        default_halo_ = 8

    cube = xr.DataArray(np.zeros((1, 16, 16), "float32"), dims=("band", "y", "x"))
    plan = _spatial_plan(
        cube,
        Spatial(),
        n_out=1,
        halo=5,
        tile=None,
        batch_size=None,
        blend="trim",
        boundary="reflect",
    )
    assert plan.halo == check_halo(5, 4, round_up=True) == 8
    with pytest.raises(InputError, match=r"^halo=64 px is larger than the cube \(16×16 px\)"):
        _spatial_plan(
            cube,
            Spatial(),
            n_out=1,
            halo=64,
            tile=None,
            batch_size=None,
            blend="trim",
            boundary="reflect",
        )


def test_validate_sits_at_the_package_base():
    import ast
    import inspect
    import sys

    import xfusion.validate

    tree = ast.parse(inspect.getsource(xfusion.validate))
    imported = {
        alias.name if isinstance(node, ast.Import) else node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    third_party = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names}
    assert third_party == {"numpy", "xarray", "xfusion.errors"}
