from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio.transform
import shapely
import xarray as xr
from pyproj import Transformer
from shapely.geometry import Polygon, mapping

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion.errors import BandError, EmptySelectionError, GridError, InputError
from xfusion.preprocess.sample import class_balance, dihedral
from xfusion.testing import raise_if_dask_computes

GRID = xf.grid((500_000, 4_000_000, 500_200, 4_000_240), "EPSG:32633", 10)  # 24 x 20 pixels


def _cube(nan_fraction=0.05, seed=0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(3, 24, 20)).astype(np.float32)
    data[0][rng.random((24, 20)) < nan_fraction] = np.nan
    return synthetic_cube(data, ["B02", "B03", "avg_rad"], grid=GRID)


def _labels(seed=1) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    lab = (rng.random((24, 20)) < 0.2).astype(np.float32)  # imbalanced, like built-up vs not
    lab[:2, :3] = np.nan
    return synthetic_cube(lab, grid=GRID, name="smod")


# ------------------------------------------------------------------------------------ sample


@pytest.mark.parametrize("stratify", [False, True])
def test_sample_eager_equals_chunked_and_computes_twice(stratify):
    cube, labels = _cube(), _labels()
    eager = xf.sample(cube, labels, 30, seed=3, stratify=stratify)
    with raise_if_dask_computes(max_computes=2) as counter:
        chunked = xf.sample(
            cube.chunk({"y": 7, "x": 6}), labels.chunk({"y": 5}), 30, seed=3, stratify=stratify
        )
    assert counter.total_computes == 2
    pd.testing.assert_frame_equal(eager, chunked)


def test_sample_values_labels_and_validity():
    cube, labels = _cube(), _labels()
    df = xf.sample(cube, labels, 40, seed=0)
    assert list(df.columns) == ["x", "y", "B02", "B03", "avg_rad", "label"]
    assert len(df) == 40
    assert not df.isna().any().any()
    assert not df.duplicated(["x", "y"]).any()
    # look every point up independently through rasterio's inverse transform
    rows, cols = rasterio.transform.rowcol(GRID.affine, df["x"], df["y"])
    np.testing.assert_array_equal(
        df[["B02", "B03", "avg_rad"]].to_numpy().T, cube.values[:, rows, cols]
    )
    np.testing.assert_array_equal(df["label"].to_numpy(), labels.values[rows, cols])


def test_sample_takes_every_valid_pixel_when_n_is_large():
    cube, labels = _cube(), _labels()
    valid = np.isfinite(cube.values).all(axis=0) & np.isfinite(labels.values)
    df = xf.sample(cube, labels, 10_000)
    rows, cols = rasterio.transform.rowcol(GRID.affine, df["x"], df["y"])
    assert set(zip(rows, cols, strict=True)) == set(map(tuple, np.argwhere(valid).tolist()))


def test_sample_is_deterministic_for_a_seed():
    cube, labels = _cube(), _labels()
    pd.testing.assert_frame_equal(
        xf.sample(cube, labels, 25, seed=7), xf.sample(cube, labels, 25, seed=7)
    )
    assert not xf.sample(cube, labels, 25, seed=7).equals(xf.sample(cube, labels, 25, seed=8))


def test_sample_stratified_counts_per_class():
    cube, labels = _cube(), _labels()
    valid = np.isfinite(cube.values).all(axis=0) & np.isfinite(labels.values)
    classes, available = np.unique(labels.values[valid], return_counts=True)
    for n in (20, 5_000):
        df = xf.sample(cube, labels, n, seed=2, stratify=True)
        got = df["label"].value_counts().sort_index()
        np.testing.assert_array_equal(got.index.to_numpy(), classes)
        np.testing.assert_array_equal(got.to_numpy(), np.minimum(n, available))


def test_sample_label_band_and_accessor():
    cube = _cube()
    labelled = xr.concat([cube, _labels().expand_dims(band=["smod"])], dim="band")
    df = labelled.xf.sample("smod", 15, seed=4)
    pd.testing.assert_frame_equal(df, xf.sample(cube, _labels(), 15, seed=4))
    pd.testing.assert_frame_equal(df, xf.sample(labelled, "smod", 15, seed=4))


def test_class_balance_matches_earth_engine_aggregate_stats():
    # the numbers Earth Engine's aggregate_stats printed for 6246 binary labels with 1174 ones
    labels = np.r_[np.ones(1174), np.zeros(6246 - 1174)]
    stats = class_balance(pd.DataFrame({"label": labels}))
    assert stats["total_count"] == stats["valid_count"] == 6246
    assert stats["sum"] == stats["sum_sq"] == 1174
    assert stats["min"] == 0 and stats["max"] == 1
    assert stats["mean"] == pytest.approx(0.18796029458853666, rel=1e-12)
    assert stats["sample_sd"] == pytest.approx(0.39071173874702697, rel=1e-12)
    assert stats["sample_var"] == pytest.approx(0.15265566279472506, rel=1e-12)
    assert stats["total_sd"] == pytest.approx(0.39068046053869543, rel=1e-12)
    assert stats["total_var"] == pytest.approx(0.15263122224672718, rel=1e-12)
    assert stats["counts"] == {0: 5072, 1: 1174}


def test_class_balance_of_labels_and_sample_attrs():
    labels = _labels()
    values = labels.values[np.isfinite(labels.values)]
    with raise_if_dask_computes(max_computes=1):
        stats = class_balance(labels.chunk({"y": 6}))
    assert stats["total_count"] == labels.size
    assert stats["valid_count"] == values.size
    assert stats["sample_sd"] == pytest.approx(np.std(values, ddof=1))
    assert stats["fractions"][1] == pytest.approx(values.mean())
    df = xf.sample(_cube(), labels, 50)
    assert df.attrs["class_balance"] == class_balance(df["label"])


def test_sample_errors():
    cube, labels = _cube(), _labels()
    shifted = labels.assign_coords(x=labels.x + 10)
    with pytest.raises(GridError, match="x coordinates differ"):
        xf.sample(cube, shifted, 5)
    with pytest.raises(GridError, match=r"grid \(12x20 pixels\) differs"):
        xf.sample(cube, labels.isel(y=slice(0, 12)), 5)
    with pytest.raises(BandError, match=r"label band 'smod' not in cube; bands are \['B02'"):
        xf.sample(cube, "smod", 5)
    with pytest.raises(InputError, match="select a time or composite first"):
        xf.sample(cube.expand_dims(time=2), labels, 5)
    with pytest.raises(EmptySelectionError, match="no valid pixel"):
        xf.sample(cube, labels * np.nan, 5)
    with pytest.raises(InputError, match="n must be an integer >= 1"):
        xf.sample(cube, labels, 0)


# ----------------------------------------------------------------------------------- patches


def _footprints(ds):
    """Pixel-centre coordinates (x, y) of every patch pixel, from rasterio's transform."""
    h, w = ds.sizes["y"], ds.sizes["x"]
    out = []
    for r, c in zip(ds.row.values, ds.col.values, strict=True):
        rr, cc = np.meshgrid(np.arange(r, r + h), np.arange(c, c + w), indexing="ij")
        xs, ys = rasterio.transform.xy(GRID.affine, rr.ravel(), cc.ravel())
        out.append((np.asarray(xs), np.asarray(ys)))
    return out


def test_patches_eager_equals_chunked_and_values():
    cube = _cube()
    eager = xf.patches(cube, "avg_rad", size=6, n=12, seed=5, max_nodata=0.2)
    with raise_if_dask_computes(max_computes=2) as counter:
        chunked = xf.patches(
            cube.chunk({"y": 7, "x": 9}), "avg_rad", size=6, n=12, seed=5, max_nodata=0.2
        )
    assert counter.total_computes == 2
    xr.testing.assert_identical(eager, chunked)
    assert eager.inputs.dims == ("sample", "band", "y", "x")
    assert eager.inputs.band.values.tolist() == ["B02", "B03"]
    assert eager.target.target_band.values.tolist() == ["avg_rad"]
    data = cube.values
    for i, (r, c) in enumerate(zip(eager.row.values, eager.col.values, strict=True)):
        np.testing.assert_array_equal(eager.inputs.values[i], data[:2, r : r + 6, c : c + 6])
        np.testing.assert_array_equal(eager.target.values[i], data[2:, r : r + 6, c : c + 6])
    x0, y0 = rasterio.transform.xy(GRID.affine, eager.row.values, eager.col.values, offset="ul")
    np.testing.assert_allclose(eager.x0.values, x0)
    np.testing.assert_allclose(eager.y0.values, y0)
    assert xf.grids.as_geobox(cube).crs == eager.attrs["crs"]


def test_patches_reject_too_much_nodata():
    cube = _cube(nan_fraction=0.0)
    data = cube.values.copy()
    data[1, 5:15, 4:12] = np.nan
    cube = cube.copy(data=data)
    size, limit = 5, 0.25
    bad = np.isnan(data).any(axis=0)
    allowed = {
        (r, c)
        for r in range(24 - size + 1)
        for c in range(20 - size + 1)
        if bad[r : r + size, c : c + size].mean() <= limit
    }
    ds = xf.patches(cube, size=size, n=10_000, max_nodata=limit)
    assert set(zip(ds.row.values.tolist(), ds.col.values.tolist(), strict=True)) == allowed
    assert len(allowed) < (24 - size + 1) * (20 - size + 1)
    strict = xf.patches(cube, size=size, n=50, max_nodata=0.0, seed=1)
    assert not np.isnan(strict.inputs.values).any()


def test_patches_nodata_in_target_counts():
    cube = _cube(nan_fraction=0.0)
    target = _labels()  # NaN in the top-left corner only
    ds = xf.patches(cube, target, size=4, n=10_000, max_nodata=0.0)
    assert ds.target.target_band.values.tolist() == ["smod"]
    assert not ((ds.row.values < 2) & (ds.col.values < 3)).any()
    assert not np.isnan(ds.target.values).any()


def test_patches_inside_box_and_polygon_regions():
    cube = _cube()
    train_box = (500_000, 4_000_100, 500_120, 4_000_240)
    ds = xf.patches(cube, size=4, n=20, regions=[train_box], max_nodata=1.0)
    for xs, ys in _footprints(ds):
        assert (xs > train_box[0]).all() and (xs < train_box[2]).all()
        assert (ys > train_box[1]).all() and (ys < train_box[3]).all()
    triangle = Polygon([(500_000, 4_000_000), (500_200, 4_000_000), (500_000, 4_000_240)])
    for region in (triangle, mapping(triangle), {"type": "Feature", "geometry": mapping(triangle)}):
        ds = xf.patches(cube, size=3, n=15, regions=region, max_nodata=1.0, seed=2)
        assert ds.sizes["sample"] == 15
        for xs, ys in _footprints(ds):
            assert shapely.contains_xy(triangle, xs, ys).all()


def test_patches_regions_in_another_crs():
    cube = _cube()
    to_lonlat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lon, lat = to_lonlat.transform(
        [500_020, 500_150, 500_150, 500_020], [4_000_020, 4_000_020, 4_000_200, 4_000_200]
    )
    polygon = Polygon(zip(lon, lat, strict=True))
    geojson = {
        "type": "FeatureCollection",
        "crs": "EPSG:4326",
        "features": [{"type": "Feature", "geometry": mapping(polygon)}],
    }
    ds = xf.patches(cube, size=4, n=20, regions=geojson, max_nodata=1.0)
    for xs, ys in _footprints(ds):
        assert shapely.contains_xy(polygon, *to_lonlat.transform(xs, ys)).all()
    same = xf.patches(cube, size=4, n=20, regions=polygon, regions_crs="EPSG:4326", max_nodata=1.0)
    xr.testing.assert_identical(ds, same)


def test_patches_training_and_evaluation_regions_stay_apart():
    cube = _cube()
    west = xr.zeros_like(cube.isel(band=0, drop=True), dtype=bool)
    west[:, :10] = True
    train = xf.patches(cube, size=5, n=30, regions=west, max_nodata=1.0, seed=0)
    evaluate = xf.patches(
        cube.chunk({"x": 5}), size=5, n=30, regions=~west.chunk({"y": 8}), max_nodata=1.0, seed=0
    )
    assert (train.col.values + 5 <= 10).all()
    assert (evaluate.col.values >= 10).all()


def test_patches_augment_with_dihedral_transforms():
    cube = _cube()
    plain = xf.patches(cube, "avg_rad", size=5, n=16, seed=9, max_nodata=1.0)
    aug = cube.xf.patches("avg_rad", size=5, n=16, seed=9, max_nodata=1.0, augment=True)
    np.testing.assert_array_equal(aug.row.values, plain.row.values)
    assert len(set(aug.dihedral.values.tolist())) > 1
    for i, k in enumerate(aug.dihedral.values):
        for var in ("inputs", "target"):
            p = plain[var].values[i]
            ref = np.rot90(p, k % 4, axes=(1, 2))
            ref = ref[:, :, ::-1] if k >= 4 else ref
            np.testing.assert_array_equal(aug[var].values[i], ref)


def test_patches_deterministic_stride_and_accessor():
    cube = _cube()
    a = xf.patches(cube, size=4, n=10, seed=1, stride=4, max_nodata=1.0)
    xr.testing.assert_identical(a, cube.xf.patches(size=4, n=10, seed=1, stride=4, max_nodata=1.0))
    assert (a.row.values % 4 == 0).all() and (a.col.values % 4 == 0).all()
    b = xf.patches(cube, size=4, n=10, seed=2, stride=4, max_nodata=1.0)
    assert not np.array_equal(a.row.values * 100 + a.col.values, b.row.values * 100 + b.col.values)
    assert xf.patches(cube, size=(3, 7), n=4, max_nodata=1.0).inputs.shape == (4, 3, 3, 7)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": 30}, InputError, r"patch size 30x30 is larger than the cube \(24x20"),
        ({"size": 4, "regions": [(0, 0, 10, 10)]}, GridError, "lie outside the cube"),
        ({"size": 4, "regions": "west"}, InputError, "regions must be boxes"),
        ({"size": (4, 5), "augment": True}, InputError, "augment needs square patches"),
        ({"size": 4, "target": "SMOD"}, BandError, "target band 'SMOD' not in cube"),
        ({"size": 4, "max_nodata": 2}, InputError, "max_nodata must be a fraction"),
        (
            {"size": 8, "regions": [(500_000, 4_000_000, 500_050, 4_000_050)]},
            EmptySelectionError,
            "no 8x8 patch fits",
        ),
    ],
)
def test_patches_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        xf.patches(_cube(), n=3, **kwargs)


def test_patches_target_on_another_grid():
    other = xf.grids.assign_grid(
        xr.DataArray(np.zeros((24, 20), "f4"), dims=("y", "x")),
        xf.grid((600_000, 4_000_000, 600_200, 4_000_240), "EPSG:32633", 10),
    )
    with pytest.raises(GridError, match="x coordinates differ"):
        xf.patches(_cube(), other, size=4, n=2)
    wrong_crs = _labels().rio.write_crs("EPSG:32634")
    with pytest.raises(GridError, match="CRS"):
        xf.patches(_cube(), wrong_crs, size=4, n=2)


def test_dihedral_matches_numpy_and_inverts():
    import jax.numpy as jnp

    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for k in range(8):
        ref = np.rot90(a, k % 4, axes=(1, 2))
        ref = np.flip(ref, 2) if k >= 4 else ref
        np.testing.assert_array_equal(dihedral(a, k, axes=(1, 2)), ref)
        np.testing.assert_array_equal(np.asarray(dihedral(jnp.asarray(a), k, axes=(1, 2))), ref)
        np.testing.assert_array_equal(dihedral(dihedral(a, k), k, inverse=True), a)
    with pytest.raises(ValueError, match=r"0\.\.7"):
        dihedral(a, 8)
