"""U-Nets train and predict on patches of any size; the coarse factor is independent of depth.

Kept fast: tiny networks with the presets' depths ("small": 3 levels, "seed": 5 levels), one
epoch, one or two samples; the real presets only on the smallest (33 px) patch.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from xfusion.errors import InputError
from xfusion.models import UNetRegressor
from xfusion.models.unet import pad_to_multiple

DEPTH3 = {"widths": (2, 2, 2), "center": 2}
DEPTH5 = {"widths": (2, 2, 2, 2, 2), "center": 2}
FAST = {"epochs": 1, "batch_size": 2, "augment": False, "progress": False}


def _patches(size, n=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 1, *size)).astype(np.float32)
    return X, 2 * X + 1


def _coarse(a, factor):
    n, b, h, w = a.shape
    return a.reshape(n, b, h // factor, factor, w // factor, factor).mean(axis=(3, 5))


@pytest.mark.parametrize(
    ("arch", "size", "factor"),
    [(DEPTH3, (100, 100), 10), (DEPTH3, (100, 100), 100), (DEPTH3, (150, 150), None)],
    ids=["100px-factor10", "100px-factor100", "150px"],
)
def test_patch_sizes_and_coarse_factors_independent_of_depth(arch, size, factor):
    X, y = _patches(size)
    target = y if factor is None else _coarse(y, factor)
    model = UNetRegressor(**arch, coarse_factor=factor, **FAST).fit(X, target)
    assert model.training_["target_shape"] == [1, *target.shape[2:]]
    assert np.isfinite(model.history_["loss"]).all()
    pred = model.predict(X)
    assert pred.shape == (2, 1, *size) and np.isfinite(pred).all()


def test_odd_size_is_reflect_padded_inside_the_network_and_cropped_back():
    X, y = _patches((37, 21))
    model = UNetRegressor(**DEPTH3, **FAST).fit(X, y)
    assert model.training_["patch_shape"] == [37, 21]
    pred = model.predict(X)
    assert pred.shape == (2, 1, 37, 21) and np.isfinite(pred).all()
    # depth 3 pads 37x21 to 40x24 by mirroring: the same numbers as predicting on the mirrored
    # patch and cropping (not the band-mean fill of before)
    padded = np.pad(X, ((0, 0), (0, 0), (0, 3), (0, 3)), mode="reflect")
    np.testing.assert_allclose(pred, model.predict(padded)[..., :37, :21], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("h", "w", "multiple"), [(3, 5, 16), (33, 21, 32), (1, 2, 4), (8, 8, 8)])
def test_pad_to_multiple_mirrors_as_numpy_reflect_even_beyond_the_input_size(h, w, multiple):
    x = np.random.default_rng(1).normal(size=(2, h, w, 3)).astype(np.float32)
    out = np.asarray(pad_to_multiple(jnp.asarray(x), multiple))
    ph, pw = -h % multiple, -w % multiple
    mode = "edge" if h == 1 else "reflect"
    expected = np.pad(x, ((0, 0), (0, ph), (0, 0), (0, 0)), mode=mode)
    expected = np.pad(expected, ((0, 0), (0, 0), (0, pw), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("preset", ["small", "seed"])
def test_every_preset_trains_and_predicts_on_an_odd_33_px_patch(preset):
    X, y = _patches((33, 33), n=1)
    model = UNetRegressor(preset=preset, **FAST).fit(X, y)
    assert model.tile_multiple_ == 2 ** {"small": 3, "seed": 5}[preset]
    pred = model.predict(X)
    assert pred.shape == (1, 1, 33, 33) and np.isfinite(pred).all()


def test_a_patch_side_that_is_not_a_multiple_of_the_coarse_factor_is_refused():
    X, y = _patches((100, 100))
    with pytest.raises(InputError, match=r"100×100 px; with coarse_factor=30 .* multiples of 30"):
        UNetRegressor(**DEPTH3, coarse_factor=30, **FAST).fit(X, y)
