from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from xfusion.cli import RECIPE_TABLE, main

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
    assert [line.split()[0] for line in lines] == list(RECIPE_TABLE)
    assert set(RECIPE_TABLE) == {"builtup", "nightlights", "cloudmask", "water", "downscale"}


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
