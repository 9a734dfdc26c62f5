"""Coarse observations that cover only part of their cell: footprint-weighted aggregation."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from xfusion.errors import InputError
from xfusion.models import UNetRegressor, UNetSegmenter
from xfusion.models.losses import LossSpec, compute_loss, metric_stats, weighted_block_mean

F = 8  # fine pixels per coarse cell side
FIT = {
    "widths": (8,),
    "center": 8,
    "coarse_factor": F,
    "epochs": 30,
    "batch_size": 8,
    "optimizer": "adam",
    "learning_rate": 0.01,
    "augment": False,
    "progress": False,
    # these tests score the fit on the training patches: all of them train (no held-out split)
    "validation_fraction": 0,
}


def _cells(a, factor=F):
    n, b, h, w = a.shape
    return a.reshape(n, b, h // factor, factor, w // factor, factor).sum(axis=(3, 5))


def _scene(n=32, size=16, seed=0):
    """Inputs, the fine field, per-cell rectangular footprints (9-25 % of a cell) and labels.

    Each label is the mean of the fine field over its footprint only, as a satellite footprint
    covering part of a coarse tile.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2, size, size)).astype(np.float32)
    fine = (2 * X[:, :1] - X[:, 1:]).astype(np.float32)
    fp = np.zeros((n, 1, size, size), bool)
    cells = size // F
    for i in range(n):
        for a in range(cells):
            for b in range(cells):
                h, w = rng.integers(3, 5, 2)
                y0, x0 = a * F + rng.integers(0, F - h + 1), b * F + rng.integers(0, F - w + 1)
                fp[i, 0, y0 : y0 + h, x0 : x0 + w] = True
    labels = (_cells(fine * fp) / _cells(fp)).astype(np.float32)
    return X, fine, fp, labels


def _footprint_rmse(pred, fp, labels):
    return float(np.sqrt(np.mean((_cells(pred * fp) / _cells(fp) - labels) ** 2)))


@pytest.fixture(scope="module")
def scene():
    return _scene()


@pytest.fixture(scope="module")
def block_model(scene):
    X, _, _, labels = scene
    return UNetRegressor(**FIT).fit(X, labels)


def test_weighted_block_mean_and_loss_equal_a_numpy_computation():
    rng = np.random.default_rng(3)
    n, h, w, c, f = 2, 8, 12, 2, 4
    pred = rng.normal(size=(n, h, w, c)).astype(np.float32)
    weights = (rng.random((n, h, w, c)) * (rng.random((n, h, w, c)) > 0.6)).astype(np.float32)
    weights[0, :4, :4, 0] = 0.0  # a cell with no observation
    obs = rng.normal(size=(n, h // f, w // f, c)).astype(np.float32)
    obs[1, 0, 2, 1] = np.nan  # a missing label
    values = np.repeat(np.repeat(obs, f, axis=1), f, axis=2)
    target = np.concatenate([values, weights], axis=-1)

    def cells(a):
        return a.reshape(n, h // f, f, w // f, f, c).sum(axis=(2, 4))

    with np.errstate(invalid="ignore"):
        agg = cells(weights * pred) / cells(weights)
    np.testing.assert_allclose(weighted_block_mean(pred, weights, f), agg, rtol=1e-5)
    valid = np.isfinite(agg) & np.isfinite(obs)
    assert valid.sum() == n * (h // f) * (w // f) * c - 2
    err = (agg - obs)[valid]
    spec = LossSpec("masked_mse", coarse_factor=f, weighted=True)
    np.testing.assert_allclose(compute_loss(spec, pred, target), np.mean(err**2), rtol=1e-5)
    huber = LossSpec("huber", coarse_factor=f, weighted=True, huber_delta=0.5)
    a = np.abs(err)
    expected = np.where(a <= 0.5, 0.5 * err**2, 0.5 * (a - 0.25)).mean()
    np.testing.assert_allclose(compute_loss(huber, pred, target), expected, rtol=1e-5)
    stats = np.asarray(metric_stats(spec, jnp.asarray(pred), jnp.asarray(target)))
    np.testing.assert_allclose(stats[:, 0], valid.sum(axis=(0, 1, 2)))  # per-band counts
    # the whole-block loss is different: it averages the prediction over every pixel
    plain = compute_loss(LossSpec("masked_mse", coarse_factor=f), pred, obs)
    block = pred.reshape(n, h // f, f, w // f, f, c).mean(axis=(2, 4))
    np.testing.assert_allclose(plain, np.nanmean((block - obs) ** 2), rtol=1e-5)
    assert abs(float(plain) - float(compute_loss(spec, pred, target))) > 0.1


def test_footprint_weighted_training_matches_the_observations_far_better(scene, block_model):
    X, _, fp, labels = scene
    model = UNetRegressor(**FIT).fit(X, labels, footprint=fp)
    with_fp = _footprint_rmse(model.predict(X), fp, labels)
    whole_block = _footprint_rmse(block_model.predict(X), fp, labels)
    # labels vary with a standard deviation of ~0.77: the footprint loss reproduces them,
    # the whole-block loss cannot (it matches block means to footprint means)
    assert labels.std() > 0.7
    assert with_fp < 0.1, with_fp
    assert whole_block > 0.5, whole_block
    assert with_fp < whole_block / 5
    # the training metrics are on the observations, aggregated the same way
    assert model.history_["rmse"][-1] < 0.15


def test_a_fine_target_with_nan_outside_the_footprint_takes_its_weights(scene, block_model):
    X, fine, fp, labels = scene
    target = np.where(fp, fine, np.nan).astype(np.float32)  # observed only in the footprint
    model = UNetRegressor(**FIT).fit(X, target)
    assert _footprint_rmse(model.predict(X), fp, labels) < 0.1
    # before, the target was averaged over the footprint and the prediction over the block
    assert _footprint_rmse(block_model.predict(X), fp, labels) > 0.5


def test_a_patches_dataset_footprint_variable_is_used():
    import jax
    import xarray as xr

    X, fine, fp, _ = _scene(n=4)
    ds = xr.Dataset(
        {
            "inputs": (("sample", "band", "y", "x"), X),
            "target": (("sample", "y", "x"), fine[:, 0]),
            "footprint": (("sample", "y", "x"), fp[:, 0]),
        },
        coords={"band": ["a", "b"]},
    )
    fast = {**FIT, "epochs": 2}
    from_ds = UNetRegressor(**fast).fit(ds)
    explicit = UNetRegressor(**fast).fit(X, fine, footprint=fp, bands=["a", "b"])
    plain = UNetRegressor(**fast).fit(X, fine, bands=["a", "b"])
    leaves = jax.tree.leaves
    pairs = zip(leaves(from_ds.params_), leaves(explicit.params_), strict=True)
    assert all(np.array_equal(u, v) for u, v in pairs)
    assert from_ds.history_["loss"] == explicit.history_["loss"]
    assert from_ds.history_["loss"] != plain.history_["loss"]


@pytest.mark.parametrize(
    ("footprint", "pattern"),
    [
        (-np.ones((4, 1, 16, 16)), r"finite and >= 0 .* from -1"),
        (np.ones((4, 1, 8, 8)), r"shape \(4, 1, 8, 8\); expected \(sample, 1 or 1 target"),
        (np.full((4, 1, 16, 16), np.inf), "finite and >= 0"),
    ],
    ids=["negative", "coarse-grid", "inf"],
)
def test_bad_footprints_are_refused(footprint, pattern):
    X, _, _, labels = _scene(n=4)
    with pytest.raises(InputError, match=pattern):
        UNetRegressor(**FIT).fit(X, labels, footprint=footprint)


def test_a_footprint_for_a_segmenter_is_refused():
    X, fine, fp, _ = _scene(n=4)
    with pytest.raises(InputError, match="UNetRegressor only"):
        UNetSegmenter(widths=(4,), epochs=1, progress=False).fit(X, fine > 0, footprint=fp)


def test_irregular_observations_one_patch_per_footprint_mask():
    """An irregular observation (a fine-grid mask and one value) is a patch whose coarse cell is
    the whole patch: coarse_factor = patch side, target (sample, 1, 1, 1), footprint = mask."""
    rng = np.random.default_rng(5)
    n, size = 32, 16
    X = rng.normal(size=(n, 2, size, size)).astype(np.float32)
    fine = (2 * X[:, :1] - X[:, 1:]).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(3, size - 3, (n, 2))
    radii = rng.uniform(2, 4, n)
    masks = (yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2 <= radii[
        :, None, None
    ] ** 2  # discs of different sizes and places
    masks = masks[:, None]
    values = ((fine * masks).sum(axis=(2, 3)) / masks.sum(axis=(2, 3)))[:, :, None, None]
    fit = {**FIT, "coarse_factor": size}
    model = UNetRegressor(**fit).fit(X, values.astype(np.float32), footprint=masks)
    pred = model.predict(X)
    agg = (pred * masks).sum(axis=(2, 3)) / masks.sum(axis=(2, 3))
    rmse = float(np.sqrt(np.mean((agg - values[:, :, 0, 0]) ** 2)))
    assert values.std() > 0.3
    assert rmse < values.std() / 4, (rmse, values.std())


# ---- irregular observations from polygons or masks: xfusion.preprocess.footprints -------------


def _grid_cube(n=48, bands=2, seed=0, chunks=None):
    """A (band, y, x) cube on a 30 m UTM grid (with ``spatial_ref``) and its affine."""
    import odc.geo.xr  # noqa: F401
    from affine import Affine
    from odc.geo.geobox import GeoBox
    from odc.geo.xr import xr_zeros

    box = GeoBox((n, n), Affine(30.0, 0.0, 300000.0, 0.0, -30.0, 4400000.0), "EPSG:32616")
    rng = np.random.default_rng(seed)
    base = xr_zeros(box, dtype="float32")
    data = rng.normal(size=(bands, n, n)).astype(np.float32)
    cube = xr.DataArray(
        data,
        dims=("band", "y", "x"),
        coords={"band": [f"b{i}" for i in range(bands)], "y": base.y, "x": base.x,
                "spatial_ref": base.spatial_ref},
    )  # fmt: skip
    return (cube.chunk({"y": chunks, "x": chunks}) if chunks else cube), box.affine


def _pixel_polygon(affine, r0, c0, r1, c1):
    """A rectangle from fractional pixel positions (row, col) to CRS coordinates."""
    import shapely

    (x0, y0), (x1, y1) = affine * (c0, r0), affine * (c1, r1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def test_rasterize_footprints_weights_are_area_fractions_and_centres():
    import shapely

    from xfusion.preprocess.footprints import rasterize_footprints

    cube, affine = _grid_cube(n=16)
    # a rectangle from (row 2.5, col 3.25) to (row 6.5, col 9.75): every pixel's covered fraction
    # is the product of its row and column overlaps
    rect = _pixel_polygon(affine, 2.5, 3.25, 6.5, 9.75)
    w = rasterize_footprints([rect], cube).values[0]
    rows = np.clip(np.minimum(np.arange(16) + 1, 6.5) - np.maximum(np.arange(16), 2.5), 0, 1)
    cols = np.clip(np.minimum(np.arange(16) + 1, 9.75) - np.maximum(np.arange(16), 3.25), 0, 1)
    np.testing.assert_allclose(w, np.outer(rows, cols), atol=1 / 64 + 1e-6)
    assert w.sum() == pytest.approx(4.0 * 6.5, abs=0.05)
    # "center": 1 where the pixel centre lies inside (shapely's own test), for a disc
    disc = shapely.Point(*(affine * (8.3, 7.1))).buffer(30 * 4.2)
    centre = rasterize_footprints([disc, rect], cube, weights="center").values
    xs, ys = np.meshgrid(cube.x.values, cube.y.values)
    np.testing.assert_array_equal(centre[0] > 0, shapely.contains_xy(disc, xs, ys))
    touched = rasterize_footprints([disc], cube, weights="touched").values[0]
    assert (touched >= centre[0]).all() and touched.sum() > centre[0].sum()
    # a GeoJSON mapping is accepted as a geometry
    geojson = rasterize_footprints([rect.__geo_interface__], cube).values[0]
    np.testing.assert_array_equal(geojson, w)


def test_footprint_patches_carry_each_footprint_across_chunks_and_overlaps():
    from xfusion.preprocess.footprints import footprint_patches, rasterize_footprints

    eager, affine = _grid_cube(n=48)
    chunked, _ = _grid_cube(n=48, chunks=16)
    # three overlapping footprints that cross the 16 px chunk boundaries, one partly outside
    polys = [
        _pixel_polygon(affine, 10.5, 12.2, 22.0, 19.8),
        _pixel_polygon(affine, 14.0, 15.0, 20.5, 30.5),
        _pixel_polygon(affine, 40.0, 44.0, 52.0, 50.0),  # half outside the 48 px cube
    ]
    full = rasterize_footprints(polys, eager).values
    band0 = eager.values[0]
    values = (full * band0).sum(axis=(1, 2)) / full.sum(axis=(1, 2))
    ds = footprint_patches(chunked, polys, values, margin=3)
    assert ds.attrs["n_dropped"] == 1  # the third lies partly outside (min_coverage=1)
    assert ds["observation"].values.tolist() == [0, 1]
    size = ds.sizes["y"]
    assert size == 16 + 2 * 3  # the widest footprint spans 16 px (cols 15..31), plus margins
    for s, obs in enumerate(ds["observation"].values):
        r, c = int(ds["row"][s]), int(ds["col"][s])
        fp = ds["footprint"].values[s]
        # the patch's footprint is the full-grid weight map's window, all of it
        np.testing.assert_allclose(fp, full[obs, r : r + size, c : c + size], atol=1e-6)
        assert fp.sum() == pytest.approx(full[obs].sum(), rel=1e-6)
        np.testing.assert_array_equal(
            ds["inputs"].values[s], eager.values[:, r : r + size, c : c + size]
        )
        # the target is the value on the footprint, NaN elsewhere
        target = ds["target"].values[s, 0]
        np.testing.assert_array_equal(np.isfinite(target), fp > 0)
        assert np.nanmax(np.abs(target - values[obs])) < 1e-6
    assert (ds["x0"].values == affine.c + 30 * ds["col"].values).all()
    same = footprint_patches(eager, polys, values, margin=3)
    xr.testing.assert_identical(same, ds)
    # masks on the grid give the same patches as the polygons' weight maps (a mask cannot know
    # what lies outside the grid, so the third is left out here)
    from_masks = footprint_patches(chunked, full[:2], values[:2], margin=3)
    np.testing.assert_allclose(from_masks["footprint"].values, ds["footprint"].values)
    half = footprint_patches(eager, polys, values, margin=3, min_coverage=0.25)
    assert half.attrs["n_dropped"] == 0 and half.sizes["sample"] == 3


def test_irregular_polygons_train_a_unet_that_aggregates_back_to_them():
    """Polygons of many shapes and sizes, overlapping, anywhere: the fit reproduces them."""
    import shapely

    from xfusion.preprocess.footprints import footprint_patches, rasterize_footprints

    cube, affine = _grid_cube(n=64, seed=4)
    fine = 2 * cube.values[0] - cube.values[1]
    rng = np.random.default_rng(6)
    polys = []
    for _ in range(48):
        cx, cy = rng.uniform(6, 58, 2)
        if rng.random() < 0.5:  # a disc
            polys.append(shapely.Point(*(affine * (cx, cy))).buffer(30 * rng.uniform(1.5, 4)))
        else:  # a rotated strip (a flight track segment)
            strip = _pixel_polygon(affine, cy - 1, cx - 5, cy + 1, cx + 5)
            polys.append(shapely.affinity.rotate(strip, rng.uniform(0, 180)))
    weights = rasterize_footprints(polys, cube).values
    values = (weights * fine).sum(axis=(1, 2)) / weights.sum(axis=(1, 2))
    ds = footprint_patches(cube, polys, values, margin=2, multiple=2)
    size = ds.sizes["y"]
    assert ds.sizes["sample"] == 48 and values.std() > 0.3
    model = UNetRegressor(**{**FIT, "coarse_factor": size}).fit(ds)
    pred = model.predict(ds["inputs"].values)[:, 0]
    fp = ds["footprint"].values
    agg = (pred * fp).sum(axis=(1, 2)) / fp.sum(axis=(1, 2))
    rmse = float(np.sqrt(np.mean((agg - values) ** 2)))
    assert rmse < values.std() / 4, (rmse, values.std())


def test_footprint_patches_refuse_bad_input():
    from xfusion.preprocess.footprints import footprint_patches, rasterize_footprints

    cube, affine = _grid_cube(n=24)
    poly = _pixel_polygon(affine, 2, 2, 12, 6)
    with pytest.raises(InputError, match="2 values for 1 footprints"):
        footprint_patches(cube, [poly], [1.0, 2.0])
    with pytest.raises(InputError, match=r"expected \(band, y, x\)"):
        footprint_patches(cube.expand_dims(time=[0]), [poly], [1.0])
    with pytest.raises(InputError, match="the largest footprint spans 10 px"):
        footprint_patches(cube, [poly], [1.0], size=8)
    with pytest.raises(InputError, match=r"on the cube's grid, \(n, 24, 24\)"):
        footprint_patches(cube, np.ones((1, 12, 12), bool), [1.0])
    with pytest.raises(InputError, match="no observation left of 1"):
        footprint_patches(cube, [poly], [np.nan])
    with pytest.raises(InputError, match="weights must be one of"):
        rasterize_footprints([poly], cube, weights="exact")
    with pytest.raises(InputError, match="footprint 0 is str"):
        rasterize_footprints(["POLYGON"], cube)


def test_varying_bands_leaves_out_bands_constant_inside_cells():
    from xfusion.preprocess.footprints import varying_bands

    rng = np.random.default_rng(1)
    X = rng.normal(size=(10, 4, 16, 16))
    cells = rng.normal(size=(10, 1, 2, 2))
    X[:, 1] = np.kron(cells[:, 0], np.ones((8, 8)))  # constant inside every 8×8 cell
    X[:, 2] = 5 * np.kron(cells[:, 0], np.ones((8, 8))) + 0.1 * rng.normal(size=(10, 16, 16))
    X[:, 3, :3, :3] = np.nan  # NaN pixels are ignored
    names = ["red", "weather", "almost", "nir"]
    assert varying_bands(X, 8, bands=names) == ["red", "nir"]
    # with one cell per 16 px patch the 8 px cells vary inside it
    assert varying_bands(X, bands=names) == names
    da = xr.DataArray(X, dims=("sample", "band", "y", "x"), coords={"band": names})
    assert varying_bands(da, 8) == ["red", "nir"]
    assert varying_bands(da, 8, min_ratio=0.01) == ["red", "almost", "nir"]
    with pytest.raises(InputError, match="no band varies"):
        varying_bands(X[:, 1:2], 8)
    with pytest.raises(InputError, match="does not divide"):
        varying_bands(X, 5)
