"""xfusion.models.kmeans (pixel k-means as a saved model) and models.evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from sklearn.cluster import KMeans as SKKMeans
from sklearn.metrics import accuracy_score, cohen_kappa_score, jaccard_score

from tests.conftest import synthetic_cube
from xfusion.errors import InputError, ModelError
from xfusion.models import load_model
from xfusion.models.evaluation import agreement, holdout_tiles
from xfusion.models.kmeans import KMeans, sample_pixels
from xfusion.testing import raise_if_dask_computes

BANDS = ["B1", "B2", "B3"]


@pytest.fixture(scope="module")
def cube():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    which = rng.integers(0, 3, size=(24, 20))
    data = centres[which].transpose(2, 0, 1) + rng.normal(0, 0.05, (3, 24, 20))
    data[:, 0, 0] = np.nan
    return synthetic_cube(data.astype(np.float32), BANDS, chunks={"y": 8, "x": 10})


def test_fit_predict_save_load_round_trip(cube, tmp_path):
    table = sample_pixels(cube, 300, seed=1)
    assert list(table.columns) == BANDS and len(table) <= 300
    assert np.isfinite(table.to_numpy()).all()
    pd.testing.assert_frame_equal(sample_pixels(cube.compute(), 300, seed=1), table)
    model = KMeans(3, n_init=2, random_state=0).fit(table)
    reference = SKKMeans(3, n_init=2, random_state=0).fit(table.to_numpy())
    np.testing.assert_allclose(model.cluster_centers_, reference.cluster_centers_)
    np.testing.assert_array_equal(model.clusters(table), reference.predict(table.to_numpy()))
    classes = np.array([5, 7, 5])
    model.label_clusters(classes, names={5: "five", 7: "seven"}, info={"size": [1, 2, 3]})
    with raise_if_dask_computes():
        lazy = cube.xf.predict(model)
    assert lazy.band.values.tolist() == ["class"]
    values = lazy.values[0]
    assert lazy.chunks is not None and np.isnan(values[0, 0])  # a NaN band: no class
    np.testing.assert_array_equal(cube.compute().xf.predict(model).values[0], values)
    rows = cube.values.reshape(3, -1).T
    ok = np.isfinite(rows).all(axis=1)
    expected = classes[reference.predict(rows[ok].astype(np.float64))]
    np.testing.assert_array_equal(values.reshape(-1)[ok], expected)
    loaded = load_model(model.save(tmp_path / "kmeans"))
    assert loaded.bands_ == BANDS and loaded.class_names_ == {"5": "five", "7": "seven"}
    np.testing.assert_array_equal(loaded.cluster_info_["size"], [1, 2, 3])
    np.testing.assert_array_equal(loaded.predict(table), model.predict(table))
    np.testing.assert_array_equal(cube.xf.predict(loaded).values, values[None])


def test_bad_inputs_are_typed_errors(cube):
    with pytest.raises(ModelError, match="not fitted"):
        KMeans(2).predict(np.zeros((2, 3)))
    with pytest.raises(InputError, match="n_clusters >= 2"):
        KMeans(1).fit(np.zeros((5, 3)))
    with pytest.raises(InputError, match="only 1 valid pixels"):
        KMeans(2).fit(np.array([[0.0, 1.0], [np.nan, 1.0]]))
    model = KMeans(2, random_state=0).fit(pd.DataFrame(np.eye(4)[:, :2], columns=["a", "b"]))
    with pytest.raises(InputError, match="one per cluster"):
        model.label_clusters([1, 2, 3])
    with pytest.raises(InputError, match="one value per cluster"):
        model.label_clusters([0, 1], info={"x": [1.0]})
    with pytest.raises(InputError, match=r"\(samples, 2\)"):
        model.predict(np.zeros((3, 5)))
    with pytest.raises(InputError, match="band, y, x"):
        sample_pixels(cube.isel(band=0), 10)


def test_holdout_tiles_and_agreement():
    grid = xr.DataArray(np.zeros((10, 13)), dims=("y", "x"))
    mask = holdout_tiles(grid, 4, 0.25, seed=3)
    tiles = mask.values[::4, ::4]  # 3 × 4 tiles, the last row and column cut short
    assert tiles.sum() == round(0.25 * 12)
    np.testing.assert_array_equal(mask.values, np.kron(tiles, np.ones((4, 4), bool))[:10, :13])
    with pytest.raises(InputError, match="fraction"):
        holdout_tiles(grid, 4, 1.0)
    rng = np.random.default_rng(1)
    a, b = rng.random(400) < 0.3, rng.random(400) < 0.5
    got = agreement(a, b)
    assert got["accuracy"] == pytest.approx(accuracy_score(b, a))
    assert got["iou"] == pytest.approx(jaccard_score(b, a))
    assert got["kappa"] == pytest.approx(cohen_kappa_score(b, a))
    with pytest.raises(InputError, match="one size"):
        agreement(a, b[:10])
