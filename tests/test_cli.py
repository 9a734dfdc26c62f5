from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from xfusion import recipes
from xfusion.cli import main
from xfusion.errors import ConfigError
from xfusion.recipes import RECIPES
from xfusion.recipes._base import config_keys

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "xfusion", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[1] > img.shape[0] > 100  # two panels side by side
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.1  # not a blank canvas
    assert len(np.unique(np.round(rgb * 20), axis=0)) > 50  # many distinct colours


def test_scene_in_process(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["scene", "--out", str(out), "--size", "32", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    catalog = out / "stac" / "catalog.json"
    assert json.loads(catalog.read_text())["type"] == "Catalog"
    assert {p.parent.name for p in (out / "stac").glob("*/collection.json")} == {
        "landsat",
        "viirs",
        "truth_radiance",
        "truth_cloud",
    }
    png = out / "quicklook_nightlights.png"
    _check_png(png)
    # The summary names every source with its grid, and where the outputs are.
    assert str(catalog) in printed and str(png) in printed
    rows = {line.split()[0]: line for line in printed.splitlines() if line.strip()}
    assert "EPSG:32737" in rows["landsat"] and "4x9x32x32" in rows["landsat"]
    assert "2021-01-14..2021-09-11" in rows["landsat"]
    assert " 480 " in rows["viirs"] and "100.0%" in rows["viirs"]


def test_recipes_lists_every_recipe(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(RECIPES)
    assert set(RECIPES) == {"builtup", "nightlights", "cloudmask", "water", "downscale"}
    # the one-line summary of each is the first line of its module's docstring
    for line, name in zip(lines, RECIPES, strict=True):
        assert line.split(None, 1)[1] == recipes.get(name).__doc__.splitlines()[0]


def test_the_registry_is_the_recipe_modules(tmp_path, monkeypatch):
    """A sixth recipe is one more file in the package: the registry finds it."""
    package = tmp_path / "xfusion_extra"
    shutil.copytree(ROOT / "xfusion" / "recipes", package / "recipes")
    (package / "__init__.py").write_text("")
    (package / "recipes" / "tiny.py").write_text(
        '"""A tiny recipe."""\nfrom xfusion.recipes.downscale import Config, run\n'
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    extra = importlib.import_module("xfusion_extra.recipes")
    assert extra.RECIPES == tuple(sorted([*RECIPES, "tiny"]))
    assert extra.summary("tiny") == "A tiny recipe."
    assert extra.get("tiny").Config is recipes.get("downscale").Config
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'; available recipes are \["):
        extra.get("nope")


def test_readme_recipe_table_names_every_recipe():
    """The README's recipe tables list the registry's recipes, one row each."""
    text = (ROOT / "README.md").read_text()
    for header in ("| recipe | what it does |", "| recipe | model, held-out score |"):
        table = text[text.index(header) :].split("\n\n", 1)[0]
        rows = [line.split("|")[1].strip().strip("`") for line in table.splitlines()[2:]]
        assert sorted(rows) == sorted(RECIPES), header


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scene", "--size", "8"], "error: size must be an integer >= 16"),
        (["scene", "--out", "{blocker}/sub"], "error: cannot write to output folder"),
        (["run", "cloudmask", "--out", "{blocker}/sub"], "error: output directory"),
        (["run", "nosuchrecipe"], "error: unknown recipe 'nosuchrecipe'"),
        (
            ["run", "cloudmask", "--set", "bogus_key=1"],
            "error: unknown config key(s) ['bogus_key']",
        ),
        (["run", "cloudmask", "--set", "max_lags='three'"], "error: config key 'max_lags' must be"),
        (["run", "cloudmask", "--config", "{blocker}.toml"], "error: config file"),
        (["run", "cloudmask", "--scheduler", "tcp://127.0.0.1:1"], "error: cannot connect"),
    ],
)
def test_bad_input_is_a_clean_error(tmp_path, capsys, argv, message):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    argv = [a.format(blocker=blocker) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


@pytest.mark.parametrize(
    "argv", [["scene", "--size", "abc"], ["demo", "nosuchrecipe"], ["fly"], ["run"]]
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: xfusion" in capsys.readouterr().err


def test_help_and_no_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert all(cmd in help_text for cmd in ("demo", "run", "recipes", "scene"))
    assert main([]) == 2


def test_run_recipe_with_toml_config(tmp_path, capsys):
    config = tmp_path / "cloudmask.toml"
    config.write_text(f'[cloudmask]\nout_dir = "{tmp_path / "ignored"}"\nseed = 1\n')
    out = tmp_path / "cm"
    assert main(["run", "cloudmask", "--config", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    # the summary prints the real metrics and where every output is
    assert f"{metrics['accuracy']:.4g}" in printed
    assert str(out / "metrics.json") in printed and str(out / "outputs.zarr") in printed
    assert tomllib.loads((out / "config.toml").read_text())["cloudmask"]["seed"] == 1
    assert not (tmp_path / "ignored").exists()  # --out wins over the file's out_dir


def test_python_dash_m_runs_the_scene_command(tmp_path):
    out = tmp_path / "demo"
    done = _run("scene", "--out", str(out), "--size", "32")
    assert done.returncode == 0, done.stderr
    assert "quicklook" in done.stdout
    _check_png(out / "quicklook_nightlights.png")


# ------------------------------------------------------------------------------------------------
# every recipe through `xfusion demo`: own folders, config.toml, progress (one run per recipe)
# ------------------------------------------------------------------------------------------------

#: Small settings per recipe (--set), so that the five demos take seconds each.
TINY = {
    "builtup": ["size=100", "n_estimators=10", "n_train=50", "n_test=500", "figures=false"],
    "nightlights": [
        "size=96", "patch_size=32", "n_patches=8", "n_validation_patches=2", "epochs=2",
    ],
    "cloudmask": ["n_clusters=[3]", "kmeans_sample=2000"],
    "water": ["size=64", "chunks=32", "n_chips=8", "epochs=2"],
    "downscale": [
        "size=60", "chunks=30", "widths=[8]", "epochs=2", "n_patches=6",
        "n_validation_patches=2", "validation_fraction=0.34", "figures=false",
    ],
}  # fmt: skip


def _main(argv: list[str]) -> tuple[int, str, str]:
    """Run the command in this process; return its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _sets(recipe: str) -> list[str]:
    return [arg for value in TINY[recipe] for arg in ("--set", value)]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    """Each recipe's demo, one after the other into the same OUT, with progress (the default)."""
    out = tmp_path_factory.mktemp("demos") / "xfusion-out"
    runs = {name: _main(["demo", name, "--out", str(out), *_sets(name)]) for name in RECIPES}
    return out, runs


def test_demos_write_each_recipe_into_its_own_folder(demos):
    # before: every demo wrote into OUT itself, and the second recipe met the first one's model/
    out, runs = demos
    for name, (code, stdout, stderr) in runs.items():
        assert code == 0, stderr
        folder = out / name
        assert f"running {name!r} -> {folder}" in stdout
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics and (folder / "outputs.zarr").is_dir()
        assert json.loads((folder / ".xfusion-output.json").read_text())["owner"] == name
    assert sorted(p.name for p in out.iterdir()) == sorted([".xfusion-output.json", *RECIPES])


def test_every_recipe_writes_a_config_toml_that_loads_back(demos):
    # before: cloudmask, water and downscale wrote config.json
    out, _ = demos
    for name in RECIPES:
        module = recipes.get(name)
        assert not (out / name / "config.json").exists()
        text = (out / name / "config.toml").read_text()
        assert text.startswith(f"[{name}]\n")
        loaded = module.Config.from_toml(out / name / "config.toml")
        given = {}
        for item in TINY[name]:
            key, _, value = item.partition("=")
            given[key] = tomllib.loads(f"v = {value}")["v"]
        expected = module.Config.from_dict({**given, "out_dir": str(out / name)})
        assert loaded == expected


def test_progress_goes_to_stderr_by_default(demos):
    _, runs = demos
    for name in ("nightlights", "water", "downscale"):  # the recipes that train a U-Net
        _, stdout, stderr = runs[name]
        # tqdm's bar over the 2 epochs (redrawn at most ten times a second, then cleared)
        assert re.search(r"training: +\d+%\|.*\| [0-2]/2 \[", stderr), stderr[-500:]
        assert "epoch/s" not in stdout and "s/epoch" not in stdout  # no bar among the results
        assert "% Completed" not in stdout


def test_quiet_rerun_of_a_demo_and_its_config_toml(demos, tmp_path):
    out, _ = demos
    first = json.loads((out / "water" / "metrics.json").read_text())
    # the same demo again, into the folder it wrote before: reused, outputs replaced
    code, stdout, stderr = _main(["demo", "water", "--out", str(out), "--quiet", *_sets("water")])
    assert code == 0 and stderr == ""  # no progress bar, no message
    assert "water finished" in stdout
    assert json.loads((out / "water" / "metrics.json").read_text()) == first
    # the written config.toml runs the same configuration again through --config
    again = tmp_path / "again"
    argv = ["run", "water", "--config", str(out / "water" / "config.toml"), "--out", str(again)]
    code, _, stderr = _main([*argv, "--quiet"])
    assert code == 0 and stderr == ""
    assert json.loads((again / "metrics.json").read_text()) == first


# ------------------------------------------------------------------------------------------------
# configuration mistakes and help
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", RECIPES)
def test_run_recipe_help_lists_every_config_key(recipe, capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", recipe, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert f"config keys of {recipe!r}" in text
    for name, kind, _, _ in config_keys(recipes.get(recipe).Config):
        assert re.search(rf"^  {name} +{re.escape(kind)}, default ", text, re.M), name
    # types in words, defaults in TOML, the first sentence of the field's documentation
    assert re.search(r"^  seed +integer, default 0$", text, re.M)
    assert re.search(r"^  source +string, default \"synthetic\"$", text, re.M)
    assert re.search(rf'^  out_dir +string, default "xfusion-out/{recipe}"$', text, re.M)
    if recipe == "water":
        assert re.search(r"^  chip_size +integer, default 32\n +Side of the square", text, re.M)
        assert re.search(r"^  halo +integer \(optional\), default unset$", text, re.M)
        assert re.search(r'^  sar_bands +list of strings, default \["HH", "HV"\]$', text, re.M)


def test_run_help_without_a_recipe_names_the_recipe_help(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "'xfusion run RECIPE --help' lists RECIPE's config keys" in text
    assert "config keys of" not in text


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("max_lags='abc'", "config key 'max_lags' must be an integer (got 'abc', a str)"),
        ("max_lags=2.5", "config key 'max_lags' must be an integer (got 2.5, a float)"),
        ("beta=true", "config key 'beta' must be a number (got True, a bool)"),
        ("bands=[1, 2]", "config key 'bands' must be a list of strings (got [1, 2], a list)"),
        ("target=3", "config key 'target' must be a string (got 3, an int)"),
    ],
)
def test_type_errors_say_the_type_in_words(tmp_path, capsys, setting, message):
    # before: "must be <class 'int'>; got 'abc' (str)"
    assert main(["run", "cloudmask", "--set", setting, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("recipe", "source", "keys"),
    [
        ("water", "stac", ["sar_source", "optical_source", "optical_source_bands",
                           "terrain_source", "terrain_source_bands", "label_source",
                           "label_source_band"]),
        ("nightlights", "ee", ["landsat_collection", "viirs_collection", "bounds", "crs"]),
        ("nightlights", "stac", ["landsat_collection", "viirs_collection"]),
        ("builtup", "stac", ["s2_collection", "viirs_collection", "ghsl_collection"]),
        ("cloudmask", "stac", ["stac_items"]),
        ("downscale", "stac", ["fine_collection", "coarse_collection"]),
    ],
)  # fmt: skip
def test_switching_source_names_every_key_to_set(tmp_path, capsys, recipe, source, keys):
    # before: `--set source="stac"` failed later with "file 'JAXA/ALOS/PALSAR/YEARLY/SAR' does
    # not exist", naming neither the key nor the others that had to change with it
    out = tmp_path / "out"
    assert main(["run", recipe, "--set", f'source="{source}"', "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: source={source!r} needs {keys} set for it")
    assert err.count("\n") == 1 and "real_sources()" in err
    assert not out.exists()


def test_switching_source_with_its_keys_given_or_switching_defaults(tmp_path):
    from xfusion.recipes import water

    fields = {
        k: v
        for k, v in water.real_sources()["stac"].items()
        if k in water.Config.SOURCE_KEYS["stac"]
    }
    config = water.Config.from_dict({"source": "stac", **fields})
    assert config.sar_source == "alos-palsar-mosaic-2010.json"
    # Earth Engine: the default assets are Earth Engine's; the keys whose meaning changes with
    # the source take its defaults unless given
    config = water.Config.from_dict({"source": "ee"})
    assert (config.sar_calibration, config.label_water_values, config.label_land_values) == (
        "palsar_dn",
        (3.0,),
        (1.0,),
    )
    given = water.Config.from_dict({"source": "ee", "label_water_values": [2]})
    assert given.label_water_values == (2.0,) and given.label_land_values == (1.0,)
    assert water.Config.from_dict({}).sar_calibration == "db"  # synthetic: unchanged
