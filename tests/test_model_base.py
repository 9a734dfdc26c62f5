"""xfusion.models.base: the model protocols predict and persistence rely on, the estimator base."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.base
from sklearn.linear_model import LinearRegression

from tests.conftest import synthetic_cube
from xfusion.errors import InputError, ModelError
from xfusion.models import KernelRidge, Ridge, UNetRegressor, UNetSegmenter
from xfusion.models.base import Estimator, PixelModel, SaveableModel, SpatialModel, clone
from xfusion.models.kmeans import KMeans
from xfusion.models.predict import predict

RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 3))
Y = X @ [1.0, -2.0, 0.5] + 0.1 * RNG.normal(size=60)

PIXEL = {
    "ridge": lambda: Ridge(alpha=0.1).fit(X, Y),
    "kernel_ridge_exact": lambda: KernelRidge(gamma=0.5, method="exact").fit(X, Y),
    "kernel_ridge_nystroem": lambda: KernelRidge(n_components=20, random_state=1).fit(X, Y),
    "kernel_ridge_rff": lambda: KernelRidge(method="rff", random_state=2).fit(X, Y),
    "kmeans": lambda: KMeans(2, n_init=1).fit(X),
}
SPATIAL = {
    "unet_regressor": lambda: UNetRegressor(widths=(4,), epochs=1, progress=False),
    "unet_segmenter": lambda: UNetSegmenter(widths=(4,), epochs=1, progress=False),
}


@pytest.mark.parametrize("name", list(PIXEL))
def test_pixel_models_satisfy_their_protocols(name):
    model = PIXEL[name]()
    assert isinstance(model, PixelModel) and isinstance(model, SaveableModel)
    assert not isinstance(model, SpatialModel)  # predict dispatches them pixel by pixel


@pytest.mark.parametrize("name", list(SPATIAL))
def test_spatial_models_satisfy_their_protocols(name):
    model = SPATIAL[name]()
    assert isinstance(model, SpatialModel) and isinstance(model, SaveableModel)


def test_a_scikit_learn_estimator_is_a_pixel_model_but_not_saveable():
    model = LinearRegression().fit(X, Y)
    assert isinstance(model, PixelModel) and not isinstance(model, SaveableModel)
    cube = synthetic_cube(X.T.reshape(3, 6, 10), ["a", "b", "c"])
    got = predict(cube, model, bands=["a", "b", "c"]).values[0]
    np.testing.assert_allclose(got, model.predict(X).reshape(6, 10))


def test_predict_refuses_an_object_that_is_no_model():
    cube = synthetic_cube(np.zeros((1, 2, 2)), ["a"])
    assert not isinstance(object(), PixelModel | SpatialModel)
    with pytest.raises(ModelError, match=r"neither predict .* nor inference_state"):
        predict(cube, object())


ALL = {**PIXEL, **SPATIAL}


@pytest.mark.parametrize("cloner", [clone, sklearn.base.clone], ids=["xfusion", "sklearn"])
@pytest.mark.parametrize("name", list(ALL))
def test_clone_gives_an_unfitted_copy_with_the_same_parameters(name, cloner):
    model = ALL[name]()
    copy = cloner(model)
    assert type(copy) is type(model) and copy is not model
    assert copy.get_params() == model.get_params()
    assert not [k for k in vars(copy) if k.endswith("_") and not k.startswith("_")]


@pytest.mark.parametrize("name", [n for n in PIXEL if n != "kmeans"])
def test_a_clone_refitted_predicts_the_same_and_fit_only_adds_underscored_attributes(name):
    model = PIXEL[name]()
    fresh = clone(model)
    before = set(vars(fresh))
    fresh.fit(X, Y)
    added = {k for k in set(vars(fresh)) - before if not k.startswith("_")}
    assert added and all(k.endswith("_") for k in added), added
    np.testing.assert_array_equal(fresh.predict(X), model.predict(X))


def test_estimator_parameters_follow_scikit_learn_conventions():
    model = KernelRidge(alpha=0.1, gamma=2.0, method="rff")
    assert list(model.get_params()) == [
        "alpha",
        "gamma",
        "n_components",
        "method",
        "random_state",
        "sampling_factor",
    ]
    assert model.set_params(n_components=7) is model and model.n_components == 7
    assert repr(model) == (
        "KernelRidge(alpha=0.1, gamma=2.0, n_components=7, method='rff', random_state=None, "
        "sampling_factor=None)"
    )
    with pytest.raises(InputError, match=r"unknown parameter 'kernel' of KernelRidge; "):
        model.set_params(kernel="poly")
    with pytest.raises(ModelError, match="not fitted"):
        Ridge().predict(X)
    with pytest.raises(InputError, match="get_params"):
        clone(Ridge)  # a class, not an estimator


def test_estimator_refuses_a_constructor_without_named_parameters():
    class Loose(Estimator):
        def __init__(self, *args):
            self.args = args

    with pytest.raises(TypeError, match=r"takes \*args"):
        Loose(1).get_params()


@pytest.mark.parametrize("name", list(ALL))
def test_every_xfusion_model_derives_from_the_estimator_base(name):
    model = ALL[name]()
    assert isinstance(model, Estimator)
    key = next(iter(model.get_params()))
    assert model.set_params(**{key: model.get_params()[key]}) is model
    with pytest.raises(InputError, match="unknown parameter 'nope'"):
        model.set_params(nope=1)
