"""Static figures: the artists hold the input data, shared scales, metrics, legends, PNGs."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.colors import to_rgba
from PIL import Image
from sklearn.metrics import mean_squared_error, r2_score

import xfusion as xf
from tests.conftest import synthetic_cube
from xfusion._viz_panels import plot_bands, plot_classes, plot_loss, plot_panels
from xfusion.errors import BandError, InputError, SourceError
from xfusion.grids import assign_grid
from xfusion.testing import raise_if_dask_computes

matplotlib.use("Agg")

GRID = xf.grid((500000, 4000000, 500600, 4000400), "EPSG:32633", 20)  # 30 x 20 px


def _image(values, name="v", units="nW/cm²/sr"):
    da = synthetic_cube(np.asarray(values, dtype=np.float32), grid=GRID, name=name)
    return da.assign_attrs(units=units)


def _maybe_chunk(da, chunked):
    return da.chunk({"y": 8, "x": 8}) if chunked else da


def _truth_prediction():
    rng = np.random.default_rng(0)
    truth = rng.gamma(2.0, 3.0, (20, 30))
    prediction = truth + rng.normal(0, 1.0, truth.shape)
    truth[2, 3] = np.nan
    prediction[5, 7] = np.nan
    return truth.astype(np.float32), prediction.astype(np.float32)


def _png_ok(path):
    with Image.open(path) as img:
        return img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


@pytest.mark.parametrize("chunked", [False, True])
def test_plot_panels_data_scales_and_metrics(chunked, tmp_path):
    t, p = _truth_prediction()
    truth, prediction = _image(t), _image(p).expand_dims(band=["pred"])
    with raise_if_dask_computes(max_computes=1):
        fig = plot_panels(
            _maybe_chunk(truth, chunked), _maybe_chunk(prediction, chunked), path=tmp_path / "p.png"
        )
    ax_t, ax_p, ax_d = fig.axes[:3]
    im_t, im_p, im_d = ax_t.images[0], ax_p.images[0], ax_d.images[0]
    np.testing.assert_allclose(np.ma.filled(im_t.get_array(), np.nan), t, equal_nan=True)
    np.testing.assert_allclose(np.ma.filled(im_p.get_array(), np.nan), p, equal_nan=True)
    np.testing.assert_allclose(
        np.ma.filled(im_d.get_array(), np.nan), p - t, rtol=1e-6, equal_nan=True
    )
    # Shared scale: the 2nd and 98th percentiles of both images together.
    both = np.concatenate([t[np.isfinite(t)], p[np.isfinite(p)]])
    np.testing.assert_allclose(im_t.get_clim(), np.percentile(both, [2, 98]), rtol=1e-6)
    assert im_t.get_clim() == im_p.get_clim()
    lo, hi = im_d.get_clim()
    assert lo == -hi and hi == pytest.approx(np.nanpercentile(np.abs(p - t), 98), rel=1e-6)
    assert im_d.get_cmap().name == "RdBu_r"
    ok = np.isfinite(t) & np.isfinite(p)
    rmse = np.sqrt(mean_squared_error(t[ok], p[ok]))
    r2 = r2_score(t[ok], p[ok])
    assert ax_p.get_title() == f"prediction\nRMSE = {rmse:.3g}, R² = {r2:.3f}"
    # Georeferenced extent from the pixel-centre coordinates.
    bb = GRID.boundingbox
    np.testing.assert_allclose(im_t.get_extent(), (bb.left, bb.right, bb.bottom, bb.top))
    assert len(fig.axes) == 6  # three panels, three colour bars
    assert fig.axes[3].get_ylabel() == "nW/cm²/sr"
    assert _png_ok(tmp_path / "p.png")


def test_plot_panels_options_and_errors():
    t, p = _truth_prediction()
    fig = plot_panels(t, p, difference=False, titles=["GHSL", "U-Net"], vmin=0, vmax=10)
    assert [ax.get_title().splitlines()[0] for ax in fig.axes[:2]] == ["GHSL", "U-Net"]
    assert fig.axes[0].images[0].get_clim() == (0.0, 10.0)
    assert len([ax for ax in fig.axes if ax.images]) == 2
    with pytest.raises(InputError, match="same shape"):
        plot_panels(t, p[:, :10])
    with pytest.raises(InputError, match="single image"):
        plot_panels(np.stack([t, t]), np.stack([p, p]))
    with pytest.raises(InputError, match="two or three"):
        plot_panels(t, p, titles=["a"])
    with pytest.raises(SourceError, match="cannot write"):
        plot_panels(t, p, path="/nonexistent-dir/x.png")


def test_plot_loss_curves_and_best_epoch(tmp_path):
    history = {
        "loss": [1.0, 0.6, 0.4, 0.3],
        "val_loss": [1.1, 0.7, 0.5, 0.55],
        "rmse": [3, 2, 1, 1],
    }
    fig = plot_loss(history, log=True, path=tmp_path / "loss.png")
    ax = fig.axes[0]
    curves = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(curves["training loss"].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(curves["training loss"].get_ydata(), history["loss"])
    np.testing.assert_array_equal(curves["validation loss"].get_ydata(), history["val_loss"])
    assert "rmse" not in curves  # only losses by default
    best = int(np.argmin(history["val_loss"])) + 1
    marker = next(v for k, v in curves.items() if k.startswith("best epoch"))
    assert marker.get_label() == f"best epoch {best}: 0.5"
    assert list(marker.get_xdata()) == [best] and list(marker.get_ydata()) == [0.5]
    assert ax.get_yscale() == "log"
    assert _png_ok(tmp_path / "loss.png")


def test_plot_loss_without_validation_and_errors():
    fig = plot_loss({"loss": [3.0, 1.0, 2.0]})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["training loss", "best epoch 2: 1"]
    fig = plot_loss({"loss": [3.0, 1.0], "rmse": [2.0, 0.5]}, keys=["rmse"], monitor="rmse")
    assert fig.axes[0].get_legend_handles_labels()[1] == ["rmse", "best epoch 2: 0.5"]
    with pytest.raises(InputError, match="non-empty"):
        plot_loss({})
    with pytest.raises(InputError, match="has no 'val_loss'"):
        plot_loss({"loss": [1.0]}, keys=["val_loss"])
    with pytest.raises(InputError, match="positive"):
        plot_loss({"loss": [1.0, 0.0]}, log=True)
    with pytest.raises(InputError, match="non-empty list"):
        plot_loss({"loss": []})


CLASSES = {0: ("non built-up", "#d9d9d9"), 1: ("built-up", "#d7301f")}


@pytest.mark.parametrize("chunked", [False, True])
def test_plot_classes_colours_and_legend(chunked, tmp_path):
    rng = np.random.default_rng(0)
    codes = (rng.random((20, 30)) < 0.3).astype(np.float32)
    codes[0, :5] = np.nan
    with raise_if_dask_computes(max_computes=1):
        fig = plot_classes(
            _maybe_chunk(_image(codes, name="built-up 2019"), chunked),
            CLASSES,
            path=tmp_path / "c.png",
        )
    ax = fig.axes[0]
    im = ax.images[0]
    np.testing.assert_array_equal(np.ma.filled(im.get_array(), np.nan), codes)
    rgba = im.to_rgba(im.get_array())
    assert np.allclose(rgba[codes == 1], to_rgba("#d7301f"))
    assert np.allclose(rgba[codes == 0], to_rgba("#d9d9d9"))
    assert np.all(rgba[np.isnan(codes)][:, 3] == 0)  # no data is blank
    valid = codes[np.isfinite(codes)]
    shares = [100 * np.mean(valid == 0), 100 * np.mean(valid == 1)]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == [f"non built-up ({shares[0]:.1f} %)", f"built-up ({shares[1]:.1f} %)"]
    patches = ax.get_legend().get_patches()
    assert [p.get_facecolor() for p in patches] == [to_rgba("#d9d9d9"), to_rgba("#d7301f")]
    assert ax.get_title() == "built-up 2019"
    assert _png_ok(tmp_path / "c.png")


@settings(max_examples=15, deadline=None)
@given(
    codes=st.lists(st.integers(-5, 300), min_size=1, max_size=6, unique=True),
    seed=st.integers(0, 2**16),
)
def test_plot_classes_any_codes_get_their_own_colour(codes, seed):
    rng = np.random.default_rng(seed)
    data = rng.choice(codes, size=(6, 7)).astype(np.float64)
    palette = matplotlib.colormaps["tab20"]
    classes = {c: (f"class {c}", palette(i)) for i, c in enumerate(codes)}
    fig = plot_classes(data, classes, fractions=False)
    im = fig.axes[0].images[0]
    rgba = im.to_rgba(im.get_array())
    for i, c in enumerate(codes):
        assert np.allclose(rgba[data == c], palette(i))
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == [f"class {c}" for c in sorted(codes)]


def test_plot_classes_defaults_and_errors():
    codes = np.array([[2.0, 7.0], [7.0, np.nan]])
    fig = plot_classes(codes)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == ["2 (33.3 %)", "7 (66.7 %)"]
    with pytest.raises(InputError, match=r"codes \[7.0\] that are not in classes"):
        plot_classes(codes, {2: "water"})
    with pytest.raises(InputError, match="unknown colour"):
        plot_classes(codes, {2: ("a", "notacolour"), 7: ("b", "red")})
    with pytest.raises(InputError, match="name or"):
        plot_classes(codes, {2: ("a", "red", 3), 7: ("b", "red")})


@pytest.mark.parametrize("chunked", [False, True])
def test_plot_bands_panels_and_limits(chunked, tmp_path):
    rng = np.random.default_rng(0)
    values = rng.random((3, 20, 30)).astype(np.float32) * np.array([1, 10, 100])[:, None, None]
    cube = assign_grid(
        xr.DataArray(
            values, dims=("band", "y", "x"), coords={"band": ["s2:B04", "s2:B08", "viirs"]}
        ),
        GRID,
    )
    with raise_if_dask_computes(max_computes=1):
        fig = plot_bands(_maybe_chunk(cube, chunked), ncols=2, path=tmp_path / "b.png")
    axes = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in axes] == ["s2:B04", "s2:B08", "viirs"]
    for b, ax in enumerate(axes):
        np.testing.assert_array_equal(ax.images[0].get_array(), values[b])
        np.testing.assert_allclose(
            ax.images[0].get_clim(), np.percentile(values[b], [2, 98]), rtol=1e-6
        )
    assert sum(not ax.axison for ax in fig.axes) == 1  # the empty fourth slot of the 2 x 2 grid
    assert _png_ok(tmp_path / "b.png")


def test_plot_bands_time_and_errors():
    values = np.arange(2 * 2 * 20 * 30, dtype=np.float32).reshape(2, 2, 20, 30)
    cube = assign_grid(
        xr.DataArray(
            values,
            dims=("time", "band", "y", "x"),
            coords={"time": np.array(["2019-01-01", "2020-01-01"], dtype="datetime64[ns]"),
                    "band": ["a", "b"]},
        ),
        GRID,
    )  # fmt: skip
    fig = plot_bands(cube, ["b"], time="2020-01-01")
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), values[1, 1])
    with pytest.raises(InputError, match="2 time steps"):
        plot_bands(cube)
    with pytest.raises(BandError, match=r"band 'c' not in cube; bands are \['a', 'b'\]"):
        plot_bands(cube, ["c"], time="2019-01-01")
    with pytest.raises(InputError, match="'band' dimension"):
        plot_bands(cube.isel(band=0))
    with pytest.raises(InputError, match="time '2021-01-01' not in band 'a'"):
        plot_bands(cube, time="2021-01-01")
    with pytest.raises(InputError, match="no 'time' dimension"):
        plot_bands(cube.isel(time=0), time="2019-01-01")
