"""Each benchmark case runs once at a tiny size: a smoke test of correctness, not of speed."""

from __future__ import annotations

import importlib

import pytest

from benchmarks.__main__ import discover


@pytest.mark.parametrize("case", discover())
def test_benchmark_case_smoke(case):
    result = importlib.import_module(f"benchmarks.bench_{case}").run(smoke=True, repeats=1)
    assert result["case"] == case
    assert result["xfusion"]["median_s"] > 0
    for name, ratio in result["ratios"].items():
        assert ratio > 0, name


def test_gpu_mode_refuses_a_cpu_jax(capsys, tmp_path, monkeypatch):
    import jax

    from benchmarks import __main__ as runner
    from benchmarks._util import DeviceError
    from benchmarks.bench_unet import run_gpu

    assert jax.default_backend() == "cpu"  # CI and developer machines have no GPU
    monkeypatch.setattr(runner, "RESULTS", tmp_path)
    assert runner.main(["unet", "scale", "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "not a GPU; it fell back to the CPU" in err and "pip install '.[gpu]'" in err
    assert not list(tmp_path.iterdir())  # nothing timed, nothing written
    with pytest.raises(DeviceError, match="fell back to the CPU"):
        run_gpu(smoke=True, repeats=1)
