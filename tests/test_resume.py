"""Resumable recipe outputs, output-folder ownership, and outputs that stay inside ``out_dir``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests.conftest import synthetic_cube
from xfusion._files import OUTPUT_MARKER, inside_dir
from xfusion.cli import main
from xfusion.errors import ConfigError
from xfusion.recipes import downscale
from xfusion.recipes._base import PROGRESS_FILE, prepare_out_dir, store_is_complete, write_zarr

ROOT = Path(__file__).resolve().parents[1]
# a tiny scene cut into 16-px chunk rows, so outputs.zarr is written in ~25 regions
TINY = dict(
    size=60,
    chunks=16,
    widths=(8,),
    epochs=2,
    n_patches=6,
    n_validation_patches=2,
    validation_fraction=0.34,
    figures=False,
)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _progress(out: Path) -> dict:
    return json.loads((out / "outputs.zarr.partial" / PROGRESS_FILE).read_text())


def _files(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()
    }


def _kill_once_some_regions_are_written(proc: subprocess.Popen, out: Path, seen: list) -> None:
    """SIGKILL ``proc`` as soon as its progress file lists some, but not all, regions."""
    while proc.poll() is None:
        try:
            progress = _progress(out)
        except (OSError, ValueError):
            time.sleep(0.002)
            continue
        if 1 <= len(progress["regions"]) < progress["n_regions"]:
            proc.send_signal(signal.SIGKILL)
            seen.append(len(progress["regions"]))
            return
        time.sleep(0.002)


def test_killed_run_resumes_to_a_bit_identical_store(tmp_path, capsys):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    argv = [sys.executable, "-m", "xfusion", "run", "downscale", "--out", str(killed)]
    for key, value in TINY.items():
        argv += ["--set", f"{key}={_toml(value)}"]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "JAX_PLATFORMS": "cpu",
    }
    with open(tmp_path / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    seen: list[int] = []
    watcher = threading.Thread(
        target=_kill_once_some_regions_are_written, args=(proc, killed, seen)
    )
    watcher.start()
    try:
        # the uninterrupted run, in this process, while the other one works towards its kill
        expected = downscale.run(downscale.Config(out_dir=str(reference), **TINY))
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        watcher.join()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert seen

    # killed while writing: no final store, the partial one not complete, no metrics
    partial = killed / "outputs.zarr.partial"
    assert not (killed / "outputs.zarr").exists() and not store_is_complete(partial)
    progress = _progress(killed)
    assert 1 <= len(progress["regions"]) < progress["n_regions"]
    assert progress["n_regions"] >= 20
    assert not (killed / "metrics.json").exists()

    # a different configuration cannot resume it: refused up front, from the CLI and the API
    before = _files(partial)
    changed = [a.replace("epochs=2", "epochs=3") for a in argv[3:]]
    assert main([*changed, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot resume") and err.count("\n") == 1
    assert "config field 'epochs' was 2, now 3" in err
    with pytest.raises(ConfigError, match="config field 'chunks' was 16, now 20"):
        downscale.run(downscale.Config(out_dir=str(killed), resume=True, **{**TINY, "chunks": 20}))
    assert _files(partial) == before

    started = time.time()
    resumed = downscale.run(downscale.Config(out_dir=str(killed), resume=True, **TINY))
    store, ref_store = killed / "outputs.zarr", reference / "outputs.zarr"
    assert store_is_complete(store) and not partial.exists()
    # the regions written before the kill were kept, not written again
    first = progress["regions"][0]
    assert first == "downscaled/y=0:16"
    kept = list((store / "downscaled" / "downscaled").glob("*.*.0.*"))
    assert kept and all(p.stat().st_mtime < started for p in kept)
    # bit for bit: every file of the store (chunks, metadata, attributes) ...
    assert _files(store) == _files(ref_store)
    # ... so every variable, coordinate and attribute reads back identical
    for name in expected.cubes:
        got = xr.open_zarr(store, group=name).load()
        want = xr.open_zarr(ref_store, group=name).load()
        xr.testing.assert_identical(got, want)
        assert got[name].notnull().any()
    # the retrained U-Net has identical weights (same seed on the CPU) and the same metrics
    for model in ("unet", "ridge"):
        weights = (killed / "model" / model / "weights.msgpack").read_bytes()
        assert weights == (reference / "model" / model / "weights.msgpack").read_bytes()
    assert json.loads((killed / "metrics.json").read_text()) == json.loads(
        (reference / "metrics.json").read_text()
    )
    assert resumed.metrics == expected.metrics


def _cube(fail_from: int | None = None, offset: float = 0.0) -> xr.DataArray:
    """A lazy (band, y, x) cube in 2-row chunks whose blocks from row ``fail_from`` on raise."""
    base = np.arange(2 * 8 * 6, dtype=np.float32).reshape(2, 8, 6)
    base[1, 3, 2] = np.nan

    def block(x, block_info=None):
        row = block_info[0]["array-location"][1][0]
        if fail_from is not None and row >= fail_from:
            raise RuntimeError(f"reading rows from {row} failed")
        return x + np.float32(offset)

    data = da.from_array(base, chunks=(2, 2, 6)).map_blocks(block, dtype=np.float32)
    coords = {"y": np.arange(8.0), "x": np.arange(6.0) * 30}
    return synthetic_cube(data, ["B1", "B2"], coords=coords).assign_attrs(units="1")


def test_failing_task_leaves_no_final_store_and_resume_skips_finished_regions(tmp_path):
    path = tmp_path / "outputs.zarr"
    partial = tmp_path / "outputs.zarr.partial"
    with pytest.raises(RuntimeError, match="reading rows from 4 failed"):
        write_zarr({"a": _cube(fail_from=4)}, path, fingerprint={"config": {"seed": 0}})
    assert not path.exists() and partial.is_dir() and not store_is_complete(partial)
    assert _progress(tmp_path)["regions"] == ["a/y=0:2", "a/y=2:4"]
    assert _progress(tmp_path)["n_regions"] == 4

    # resuming for another configuration, or with other cubes, is refused and changes nothing
    with pytest.raises(ConfigError, match="config field 'seed' was 0, now 1"):
        write_zarr({"a": _cube()}, path, resume=True, fingerprint={"config": {"seed": 1}})
    with pytest.raises(ConfigError, match=r"output 'a' shape was \[2, 8, 6\], now \[1, 8, 6\]"):
        write_zarr(
            {"a": _cube().isel(band=[0])}, path, resume=True, fingerprint={"config": {"seed": 0}}
        )
    assert _progress(tmp_path)["regions"] == ["a/y=0:2", "a/y=2:4"]

    # resume writes only the missing rows: the finished ones keep the first call's values
    write_zarr({"a": _cube(offset=100)}, path, resume=True, fingerprint={"config": {"seed": 0}})
    assert store_is_complete(path) and not partial.exists()
    got = xr.open_zarr(path, group="a")["a"].values
    base = _cube().values
    np.testing.assert_array_equal(got[:, :4], base[:, :4])
    np.testing.assert_array_equal(got[:, 4:], base[:, 4:] + 100)

    # without resume, a stale partial store is discarded and everything is written afresh
    with pytest.raises(RuntimeError):
        write_zarr({"a": _cube(fail_from=6)}, path)
    assert store_is_complete(path)  # the earlier complete store is untouched
    write_zarr({"a": _cube(offset=7)}, path)
    np.testing.assert_array_equal(xr.open_zarr(path, group="a")["a"].values, base + 7)
    assert not partial.exists()


def test_write_zarr_round_trip(tmp_path):
    times = pd.to_datetime(["2021-01-01", "2021-01-17", "2021-02-02"])
    values = np.random.default_rng(0).random((3, 2, 10, 7)).astype(np.float32)
    values[0, 0, :3] = np.nan
    series = xr.DataArray(
        values,
        dims=("time", "band", "y", "x"),
        coords={
            "time": times,
            "band": ["NDVI", "EVI"],
            "y": 4.5e6 - 30 * np.arange(10),
            "x": 3e5 + 30 * np.arange(7),
            "spatial_ref": xr.DataArray(0, attrs={"crs_wkt": "EPSG:32615"}),
        },
        attrs={"units": "1", "long_name": "vegetation index"},
        name="ignored",
    )
    table = xr.DataArray(np.arange(5, dtype=np.int16), dims=("sample",), name="n")
    path = write_zarr({"series": series, "table": table}, tmp_path / "o.zarr", chunks={"y": 4})
    assert store_is_complete(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]
    got = xr.open_zarr(path, group="series")
    assert got["series"].chunks == ((3,), (2,), (4, 4, 2), (7,))
    xr.testing.assert_identical(got["series"].load(), series.rename("series"))
    assert got["series"].attrs == {"units": "1", "long_name": "vegetation index"}
    np.testing.assert_array_equal(xr.open_zarr(path, group="table")["table"].values, np.arange(5))

    # resume over a complete store from the same inputs keeps it as it is
    stamp = (path / "series" / "series" / "0.0.0.0").stat().st_mtime_ns
    write_zarr({"series": series, "table": table}, path, chunks={"y": 4}, resume=True)
    assert (path / "series" / "series" / "0.0.0.0").stat().st_mtime_ns == stamp


def test_foreign_output_directory_is_refused_untouched(tmp_path, capsys):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="holds files that are not an xfusion output") as info:
        downscale.run(downscale.Config(out_dir=str(foreign), **TINY))
    assert repr(str(foreign)) in str(info.value)
    for argv in (
        ["run", "downscale", "--out", str(foreign)],
        ["demo", "cloudmask", "--out", str(foreign)],
        ["scene", "--out", str(foreign), "--size", "16"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: output directory {str(foreign)!r} holds files")
        assert err.count("\n") == 1
    assert sorted(p.name for p in foreign.iterdir()) == ["chapter1.tex"]

    # a file where a folder is expected
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        prepare_out_dir(foreign / "chapter1.tex")


def test_new_empty_and_earlier_output_directories_are_used(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (tmp_path / "new" / "deeper", empty):
        out = prepare_out_dir(folder)
        marker = json.loads((out / OUTPUT_MARKER).read_text())
        assert marker["created_by"] == "xfusion"
    # an earlier output (it has the marker) is reused, whatever it holds
    (empty / "metrics.json").write_text("{}")
    assert prepare_out_dir(empty) == empty
    assert (empty / "metrics.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/etc/passwd", "leaves the output directory"),
        ("../sibling", "leaves the output directory"),
        ("model/../../x", "leaves the output directory"),
        ("", "leaves the output directory"),
        ("escape/model", "outside the output directory"),
    ],
)
def test_output_names_cannot_leave_the_output_directory(tmp_path, name, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "escape").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ConfigError, match=message):
        inside_dir(out, name)
    assert inside_dir(out, "model/unet") == out / "model" / "unet"


@pytest.mark.parametrize("where", ["model", "model/unet"])
def test_links_leading_outside_the_output_directory_are_refused(tmp_path, where):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    prepare_out_dir(out)
    link = out / where
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ConfigError, match=f"{link.name}' is a symbolic link to .*outside"):
        downscale.run(downscale.Config(out_dir=str(out), **TINY))
    assert list(elsewhere.iterdir()) == []
    # a link that stays inside is fine
    link.unlink()
    (out / "stac").mkdir()
    link.symlink_to(out / "stac", target_is_directory=True)
    assert prepare_out_dir(out) == out


def test_run_help_documents_resume_and_output_rules(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--resume" in text and "outputs.zarr.partial" in text
    assert ".xfusion-output.json" in text and "refused" in text
