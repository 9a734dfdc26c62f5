"""What every recipe is built from: config field groups, one validate, one writer, baselines."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import rioxarray
import xarray as xr
from odc.geo.geom import BoundingBox

import xfusion as xf
from xfusion.errors import ConfigError
from xfusion.recipes import _base as recipe
from xfusion.recipes import downscale
from xfusion.recipes._base import (
    AreaFields,
    ChunkFields,
    DateFields,
    RecipeConfig,
    RecipeResult,
    TrainingFields,
    baseline_block,
    config_keys,
    prepare_out_dir,
    write_results,
)
from xfusion.testing import raise_if_dask_computes


@dataclasses.dataclass
class Config(TrainingFields, ChunkFields, DateFields, AreaFields, RecipeConfig):
    """A recipe of this test.

    Parameters
    ----------
    alpha : float
        A field of the recipe itself.
    """

    chunks: int = 32
    alpha: float = 1.0
    #: every config whose rows were checked (the test of "once")
    CHECKED: ClassVar[list] = []

    def checks(self):
        self.CHECKED.append(self.alpha)
        return [(self.alpha > 0, "alpha", "> 0")]


def test_groups_compose_one_config_in_declaration_order():
    names = [f.name for f in dataclasses.fields(Config)]
    assert names == [
        "out_dir", "seed", "source", "resume", "size", "difficulty", "figures",  # RecipeConfig
        "bounds", "bounds_crs", "crs", "resolution",  # AreaFields
        "start", "end",  # DateFields
        "chunks", "persist",  # ChunkFields (chunks keeps its place with the recipe's default)
        "holdout_fraction", "epochs", "batch_size", "learning_rate",  # TrainingFields
        "alpha",
    ]  # fmt: skip
    assert Config().chunks == 32
    # the help of every key comes from the group that declares it, or from the recipe
    docs = {name: doc for name, _, _, doc in config_keys(Config)}
    assert docs["persist"].startswith("Keep the prepared cubes in (distributed) memory")
    assert (
        docs["holdout_fraction"]
        == "Fraction of the scene kept out of training; metrics are measured there."
    )
    assert docs["alpha"] == "A field of the recipe itself."


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"source": "ftp"}, "'source' must be one of ('synthetic', 'stac', 'ee'); got 'ftp'"),
        ({"bounds": (1.0, 0.0, 0.0, 1.0)}, "'bounds' must be (left, bottom, right, top) with"),
        ({"start": "not a date"}, "'start' must be a date; got 'not a date'"),
        ({"chunks": 0}, "'chunks' must be >= 1; got 0"),
        ({"holdout_fraction": 1.0}, "'holdout_fraction' must be strictly between 0 and 1; got 1.0"),
        ({"alpha": -1.0}, "'alpha' must be > 0; got -1.0"),
    ],
)  # fmt: skip
def test_validate_names_the_field_and_what_was_expected(fields, message):
    with pytest.raises(ConfigError) as info:
        Config(**fields)
    assert str(info.value).startswith(f"config field {message}")


def test_validate_runs_once_when_the_config_is_built():
    Config.CHECKED.clear()
    Config(alpha=3.0)
    Config.from_dict({"alpha": 2.0})
    assert Config.CHECKED == [3.0, 2.0]  # the recipe's rows, once per config, when built


def _warned(record) -> list[str]:
    return sorted(str(w.message).split(";")[0] for w in record)


def test_old_key_names_load_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning) as record:
        config = downscale.Config.from_dict({"n_val_patches": 3, "chunk": 30})
    assert (config.n_validation_patches, config.chunks) == (3, 30)
    assert _warned(record) == [
        "config key 'chunk' is now 'chunks'",
        "config key 'n_val_patches' is now 'n_validation_patches'",
    ]
    with pytest.warns(DeprecationWarning, match=r"'train_fraction' is now 'holdout_fraction' \("):
        config = downscale.Config.from_dict({"train_fraction": 0.75})
    assert config.holdout_fraction == pytest.approx(0.25)
    with pytest.warns(DeprecationWarning) as record:
        config = Config.from_dict({"region": [0, 0, 10, 10], "region_crs": "EPSG:4326"})
    assert (config.bounds, config.bounds_crs) == ((0.0, 0.0, 10.0, 10.0), "EPSG:4326")
    assert _warned(record) == [
        "config key 'region' is now 'bounds'",
        "config key 'region_crs' is now 'bounds_crs'",
    ]
    with pytest.raises(ConfigError, match="'chunk' and 'chunks' are the same setting"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            Config.from_dict({"chunk": 30, "chunks": 30})


def test_area_grid_and_date_selection():
    config = Config(bounds=(36.6, -1.45, 37.1, -1.1), bounds_crs="EPSG:4326", crs="EPSG:32737")
    gbox = config.grid(480.0)
    expected = BoundingBox(36.6, -1.45, 37.1, -1.1, crs="EPSG:4326").to_crs("EPSG:32737")
    assert gbox.crs.epsg == 32737 and gbox.resolution.x == 480.0
    assert gbox.boundingbox.left <= expected.left < gbox.boundingbox.left + 480.0
    assert gbox.boundingbox.top >= expected.top > gbox.boundingbox.top - 480.0
    with pytest.raises(ConfigError, match="a grid needs bounds and crs"):
        Config().grid()
    times = pd.to_datetime(
        ["2021-01-01", "2021-02-01 10:00", "2021-03-01", "2021-04-01"], format="ISO8601"
    )
    cube = xr.DataArray(np.arange(4.0), dims="time", coords={"time": times}).chunk(1)
    dated = Config(start="2021-02-01", end="2021-04-01")
    assert list(dated.select_dates(cube).time.dt.month.values) == [2, 3]
    assert list(dated.select_dates(cube, also="2021-04-01").time.dt.month.values) == [2, 3, 4]
    assert Config().select_dates(cube).sizes["time"] == 4


def test_baseline_block_and_the_summary():
    block = baseline_block(
        {"rmse": 0.5}, {"mean": {"rmse": 0.8}, "ridge": {"rmse": 0.52}}, metric="rmse"
    )
    entry = block["baselines"]
    assert entry["baseline"] == "ridge" and entry["baseline_rmse"] == 0.52
    assert entry["model_rmse"] == 0.5 and entry["scores"]["mean"] == {"rmse": 0.8}
    assert block["beats_baseline"] is False  # 0.5 is not 10 % below 0.52
    higher = baseline_block({"iou": 0.9}, {"otsu": {"iou": 0.7}}, metric="iou")
    assert higher["beats_baseline"] is True


def test_write_results_writes_every_output_in_order(tmp_path):
    config = Config(out_dir=str(tmp_path / "out"), figures=False)
    out = prepare_out_dir(config.out_dir, config=config)
    scene = xf.datasets.synthetic_scene("downscale", size=40)
    sif = scene["truth_sif"].isel(time=0)
    model = xf.models.Ridge(alpha=1.0).fit(scene["modis"].isel(time=0), sif.isel(band=0))
    block = baseline_block({"rmse": 0.1}, {"mean": {"rmse": 0.3}}, metric="rmse")
    drawn = []
    result = write_results(
        config,
        out,
        {"sif": sif},
        {"rmse": 0.1},
        baselines=block,
        cog=("sif", sif),
        models={"ridge": model},
        figures=lambda: drawn.append(1) or {},
    )
    assert list(result.files) == ["zarr", "cog", "model_ridge", "config", "metrics"]
    assert drawn == []  # figures=False: not drawn
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["beats_baseline"] is True and metrics["baselines"]["baseline"] == "mean"
    assert metrics == result.metrics
    np.testing.assert_array_equal(rioxarray.open_rasterio(out / "sif.tif").values, sif.values)
    reloaded = xf.load_model(out / "model" / "ridge")
    np.testing.assert_allclose(reloaded.coef_, model.coef_)
    assert Config.from_toml(out / "config.toml") == config
    assert (out / "config.toml").read_text().startswith("[test_recipe_skeleton]\n")
    assert "beats it" in result.summary()


def test_difficulty_picks_the_hard_synthetic_scene(tmp_path):
    from xfusion.datasets import synthetic_scene
    from xfusion.recipes._sources import write_synthetic

    config = Config(out_dir=str(tmp_path), size=64, difficulty="hard")
    scene, _ = write_synthetic("downscale", config, tmp_path, {"modis": ["NDVI"]})
    hard = synthetic_scene("downscale", size=64, difficulty="hard")
    standard = synthetic_scene("downscale", size=64)
    np.testing.assert_array_equal(scene["modis"].values, hard["modis"].values)
    assert not np.array_equal(scene["modis"].values, standard["modis"].values)
    with pytest.raises(ConfigError, match=r"'difficulty' must be one of \('standard', 'hard'\)"):
        Config(difficulty="harder")


@pytest.mark.parametrize(
    ("model", "baselines", "who"),
    [
        ({"iou": float("nan")}, {"otsu": {"iou": 0.4}}, "the model's"),
        ({}, {"otsu": {"iou": 0.4}}, "the model's"),
        ({"iou": 0.5}, {"otsu": {"iou": float("nan")}}, "every baseline's"),
    ],
)
def test_an_undefined_score_gives_no_verdict_instead_of_failing(model, baselines, who):
    block = baseline_block(model, baselines, metric="iou")
    assert block["beats_baseline"] is None
    assert block["baselines"]["comparable"] is False
    assert block["baselines"]["reason"].startswith(f"{who} iou is undefined")
    result = RecipeResult("demo", {"iou": 0.5, **block}, {}, {}, Path("out"))
    assert result.summary().splitlines()[-1].startswith("  baselines       no verdict: ")


def test_pick_and_the_table_helpers_of_checks():
    config = Config(seed=4, alpha=2.5)
    assert config.pick("alpha", "seed", "chunks") == {"alpha": 2.5, "seed": 4, "chunks": 32}
    with pytest.raises(ConfigError, match=r"Config has no field\(s\) \['alhpa'\]"):
        config.pick("alhpa")
    assert recipe.at_least(config, 3, "alpha", "seed") == [
        (False, "alpha", ">= 3"),
        (True, "seed", ">= 3"),
    ]
    assert recipe.one_of(config, "source", ("stac", "ee")) == [
        (False, "source", "one of ('stac', 'ee')")
    ]

    @dataclasses.dataclass
    class Tabled(RecipeConfig):
        kind: str = "a"
        count: int = 1

        def checks(self):
            return [*recipe.at_least(self, 1, "count"), *recipe.one_of(self, "kind", ("a", "b"))]

    with pytest.raises(ConfigError, match=r"config field 'count' must be >= 1; got 0"):
        Tabled(count=0)
    with pytest.raises(ConfigError, match=r"config field 'kind' must be one of \('a', 'b'\)"):
        Tabled(kind="c")


def test_bands_by_year_gives_a_band_per_year_with_the_values_and_nan_nodata():
    years = pd.to_datetime(["2015-07-01", "2016-07-01", "2019-07-01"])
    data = np.arange(3 * 2 * 3, dtype="float32").reshape(3, 1, 2, 3)
    data[1, 0, 0, 0] = np.nan
    coords = {"time": years, "band": ["builtup"], "source": "fused"}
    maps = xr.DataArray(data, dims=("time", "band", "y", "x"), coords=coords).chunk(1)
    with raise_if_dask_computes():
        cube = recipe.bands_by_year(maps)
    assert cube.dims == ("band", "y", "x") and cube.band.values.tolist() == ["2015", "2016", "2019"]
    assert "source" not in cube.coords and np.isnan(cube.rio.nodata)
    np.testing.assert_array_equal(cube.values, data[:, 0])


def test_every_skeleton_name_a_recipe_uses_is_in_the_namespace():
    """``recipe.X`` in a recipe module resolves in ``xfusion.recipes._base`` and its __all__."""
    import ast

    assert all(hasattr(recipe, name) for name in recipe.__all__)
    for name in xf.recipes.RECIPES:
        tree = ast.parse(Path(xf.recipes.get(name).__file__).read_text(encoding="utf-8"))
        used = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "recipe"
        }
        assert used <= set(recipe.__all__), (name, used - set(recipe.__all__))


def test_model_recipe_config_is_every_group_in_the_same_order():
    @dataclasses.dataclass
    class Listed(TrainingFields, ChunkFields, DateFields, AreaFields, RecipeConfig):
        chunks: int = 16
        alpha: float = 1.0

    @dataclasses.dataclass
    class Composed(recipe.ModelRecipeConfig):
        chunks: int = 16
        alpha: float = 1.0

    assert [f.name for f in dataclasses.fields(Composed)] == [
        f.name for f in dataclasses.fields(Listed)
    ]
    assert config_keys(Composed) == config_keys(Listed)
    assert Composed().to_dict() == Listed().to_dict()
    with pytest.raises(ConfigError, match="'holdout_fraction' must be strictly between 0 and 1"):
        Composed(holdout_fraction=0.0)


def test_reflectance_fields_check_the_bands_and_scale_lazily():
    @dataclasses.dataclass
    class Optical(recipe.ReflectanceFields, RecipeConfig):
        bands: tuple[str, ...] = ("B2", "B3")
        qa_band: str = "QA"
        scale_factor: float = 2.0
        scale_offset: float = -0.5

    values = np.arange(18, dtype="float32").reshape(3, 2, 3)
    cube = xr.DataArray(values, dims=("band", "y", "x"), coords={"band": ["B3", "QA", "B2"]})
    with raise_if_dask_computes():
        refl = Optical().reflectance(cube.chunk())
    assert refl.band.values.tolist() == ["B2", "B3"]
    np.testing.assert_array_equal(refl.values, values[[2, 0]] * 2.0 - 0.5)
    unscaled = Optical(scale_factor=1.0, scale_offset=0.0).reflectance(cube)
    np.testing.assert_array_equal(unscaled.values, values[[2, 0]])
    with pytest.raises(xf.errors.BandError, match="'QA_PIXEL' not in opened cube"):
        Optical(qa_band="QA_PIXEL").reflectance(cube)
    with pytest.raises(ConfigError, match="'bands' must be at least one band"):
        Optical(bands=())


def test_grid_or_extent_is_the_bounds_grid_or_the_cubes_extent():
    from tests.conftest import synthetic_cube

    cube = synthetic_cube(np.zeros((1, 4, 6)), ["a"], grid=xf.grid((0, 0, 600, 400), 32633, 100))
    extent = Config(resolution=200.0).grid_or_extent(cube)
    assert extent.crs.epsg == 32633 and extent.shape == (2, 3)
    assert tuple(extent.boundingbox) == (0.0, 0.0, 600.0, 400.0)
    bounded = Config(bounds=(0.0, 0.0, 300.0, 300.0), crs="EPSG:32633", resolution=100.0)
    assert bounded.grid_or_extent(cube).shape == (3, 3)
    other = Config(crs="EPSG:4326", resolution=0.001).grid_or_extent(cube)
    assert other.crs.epsg == 4326 and other.resolution.x == 0.001


def test_open_collections_reads_stac_and_earth_engine_by_key(tmp_path):
    from tests.conftest import synthetic_cube
    from xfusion.testing.ee import FakeImage, fake_earth_engine

    grid = xf.grid((0, 0, 40, 40), 32633, 10)
    values = np.arange(32, dtype="float32").reshape(2, 4, 4)
    cube = synthetic_cube(values[None], ["a", "b"], times=["2020-06-01"], grid=grid)
    catalog = xf.datasets.write_stac({"one": cube}, tmp_path / "stac").parent
    reads = {"x": (catalog / "one" / "collection.json", ["b"], None)}
    opened = recipe.open_collections("stac", reads)["x"]
    np.testing.assert_array_equal(opened.isel(time=0, band=0).values, values[1])
    images = [
        FakeImage({"a": values[0]}, grid=grid, time="2020-06-01", properties={"cloud": 5.0}),
        FakeImage({"a": values[1]}, grid=grid, time="2020-07-01", properties={"cloud": 50.0}),
        FakeImage({"a": values[1]}, grid=grid, time="2021-07-01", properties={"cloud": 5.0}),
    ]
    with fake_earth_engine({"TEST/C": images}):
        cubes = recipe.open_collections(
            "ee",
            {"clear": ("TEST/C", ["a"], grid), "all": ("TEST/C", ["a"], grid)},
            dates={"clear": ("2020-01-01", "2021-01-01")},
            filters={"clear": {"cloud": ("lt", 20.0)}},
        )
        assert cubes["clear"].sizes["time"] == 1 and cubes["all"].sizes["time"] == 3
        np.testing.assert_array_equal(cubes["clear"].isel(time=0, band=0).values, values[0])
    with pytest.raises(ConfigError, match="source must be one of"):
        recipe.open_collections("ftp", reads)
