"""U-Net inference options: BatchNorm folding and bf16 compute (xfusion.models.inference)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import synthetic_cube
from xfusion.errors import InputError, ModelError
from xfusion.models import inference, unet
from xfusion.models.predict import predict
from xfusion.testing import raise_if_dask_computes

ARCH = {"in_channels": 3, "out_channels": 2, "widths": [4, 8], "center": 16}


def random_unet(arch=ARCH, seed=0):
    """``(config, params)`` with random weights, biases and BatchNorm statistics."""
    params = unet.unet_params(unet.build_unet(arch, seed=seed))
    rng = np.random.default_rng(seed + 1)

    def randomise(node):
        for key, value in node.items():
            if isinstance(value, dict):
                randomise(value)
            elif key in ("bias", "mean"):
                node[key] = rng.normal(0.0, 0.3, value.shape).astype(np.float32)
            elif key in ("scale", "var"):
                node[key] = rng.uniform(0.3, 2.0, value.shape).astype(np.float32)

    randomise(params)
    config = {
        "architecture": dict(arch),
        "input_mean": [0.5, 0.2, 0.1],
        "input_std": [0.3, 0.1, 0.2],
        "output": "regression",
        "target_offset": [1.0, -2.0],
        "target_scale": [3.0, 0.5],
    }
    return config, params


class TileModel:
    """A spatial model around ``(config, params)`` (the protocol ``predict`` reads)."""

    tile_multiple_ = 4
    default_halo_ = 8
    apply_tiles = staticmethod(unet.apply_tiles)

    def __init__(self, config, params):
        self.config, self.params = config, params
        self.bands_ = ("a", "b", "c")
        self.output_bands_ = ("p", "q")

    def inference_state(self):
        return self.config, self.params


def tiles(n=3, size=24, seed=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 0.2, (n, 3, size, size)).astype(np.float32)
    x[0, 1, 3, 4] = np.nan
    return x


def test_folded_network_equals_batchnorm_network():
    config, params = random_unet()
    folded_config, folded = inference.fold_batchnorm(config, params)
    assert folded_config["architecture"]["norm"] == "none"
    assert "norm" not in config["architecture"]  # the input is not modified
    assert "bn1" not in folded["encoders"]["0"] and "bn1" in params["encoders"]["0"]
    x = tiles()
    ref = unet.apply_tiles(config, params, x)
    out = unet.apply_tiles(folded_config, folded, x)
    spread = float(ref.max() - ref.min())
    diff = float(np.abs(out - ref).max())
    assert spread > 1.0  # the random statistics matter: a wrong fold would show
    assert diff <= 1e-5 * spread, diff
    # a fold that ignored the running mean would be far off
    broken_config, broken = inference.fold_batchnorm(config, _zero_means(params))
    assert np.abs(unet.apply_tiles(broken_config, broken, x) - ref).max() > 1e-2 * spread


def _zero_means(params):
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out[key] = _zero_means(value)
        else:
            out[key] = np.zeros_like(value) if key == "mean" else value
    return out


def test_fold_refuses_groupnorm_and_keeps_a_folded_network():
    arch = {**ARCH, "norm": "group"}
    params = unet.unet_params(unet.build_unet(arch))
    with pytest.raises(ModelError, match="only BatchNorm folds"):
        inference.fold_batchnorm({"architecture": arch}, params)
    config, folded = inference.fold_batchnorm(*random_unet())
    again_config, again = inference.fold_batchnorm(config, folded)
    assert again_config["architecture"]["norm"] == "none"
    np.testing.assert_array_equal(again["head"]["kernel"], folded["head"]["kernel"])
    broken = {**folded, "center": {"conv1": folded["center"]["conv1"]}}
    with pytest.raises(ModelError, match="without its BatchNorm"):
        inference.fold_batchnorm(random_unet()[0], broken)


def test_bf16_is_close_to_fp32_but_not_equal():
    config, params = random_unet()
    x = tiles()
    ref = unet.apply_tiles(config, params, x)
    for fold in (False, True):
        c, p = inference.inference_options(config, params, precision="bf16", fold=fold)
        assert c["precision"] == "bf16"
        out = inference.apply_tiles(c, p, x)
        assert out.dtype == np.float32 and out.shape == ref.shape
        diff = float(np.abs(out - ref).max())
        spread = float(ref.max() - ref.min())
        assert 0 < diff < 0.05 * spread, (fold, diff, spread)
    # fp32 through the inference module: the same program as unet.apply_tiles
    c, p = inference.inference_options(config, params)
    np.testing.assert_array_equal(inference.apply_tiles(c, p, x), ref)


def test_predict_options_lazy_and_close_to_default():
    config, params = random_unet()
    model = TileModel(config, params)
    rng = np.random.default_rng(5)
    cube = synthetic_cube(rng.normal(0.3, 0.2, (3, 40, 36)).astype(np.float32), ["a", "b", "c"])
    chunked = cube.chunk({"y": 16, "x": 16})
    ref = predict(chunked, model).values  # the same blocks and tiles as below
    spread = float(np.nanmax(ref) - np.nanmin(ref))
    with raise_if_dask_computes():
        folded = predict(chunked, model, fold_batchnorm=True)
        half = predict(chunked, model, precision="bf16", fold_batchnorm=True)
    assert folded.chunks is not None
    assert np.abs(folded.values - ref).max() <= 1e-5 * spread
    diff = np.abs(half.values - ref).max()
    assert 0 < diff < 0.05 * spread
    eager = predict(cube, model, precision="bf16", fold_batchnorm=True)
    assert eager.chunks is None
    whole = predict(cube, model).values
    assert 0 < np.abs(eager.values - whole).max() < 0.05 * spread


def test_predict_options_refused_where_they_do_not_apply():
    from sklearn.linear_model import LinearRegression

    cube = synthetic_cube(np.zeros((3, 8, 8), np.float32), ["a", "b", "c"])
    model = TileModel(*random_unet())
    with pytest.raises(InputError, match=r"precision must be one of \['fp32', 'bf16'\]"):
        predict(cube, model, precision="fp16")
    pixel = LinearRegression().fit(np.eye(3), [0.0, 1.0, 2.0])
    with pytest.raises(InputError, match="pixel model"):
        predict(cube, pixel, bands=["a", "b", "c"], precision="bf16")

    class Custom(TileModel):
        apply_tiles = staticmethod(lambda config, params, x: x[:, :2])

    with pytest.raises(ModelError, match="has its own apply_tiles"):
        predict(cube, Custom(*random_unet()), fold_batchnorm=True)
