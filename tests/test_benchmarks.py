"""Each benchmark case runs once at a tiny size: a smoke test of correctness, not of speed."""

from __future__ import annotations

import importlib
import inspect

import pytest

from benchmarks.__main__ import check_result, discover, main


def test_a_smoke_run_checks_each_result_and_exits_1_on_a_wrong_one(capsys):
    # every case runs tiny in CI through the README's `python -m benchmarks --smoke`, whose
    # exit status is 1 when a case's result fails check_result; here one cheap case end to end
    assert main(["composite", "--smoke"]) == 0
    assert "error:" not in capsys.readouterr().err
    good = {"case": "ridge", "xfusion": {"median_s": 0.5}, "ratios": {"scikit-learn": 1.6}}
    assert check_result("ridge", good) == []
    bad = {"case": "ridge", "xfusion": {"median_s": 0.0}, "ratios": {"a": float("nan"), "b": -1}}
    problems = check_result("unet", bad)
    assert len(problems) == 4, problems
    assert "names case 'ridge', expected 'unet'" in problems[0]
    assert "'a' is nan" in problems[2] and "'b' is -1" in problems[3]


def test_every_case_has_a_run_with_a_smoke_mode():
    for case in discover():
        run = importlib.import_module(f"benchmarks.bench_{case}").run
        assert {"smoke", "repeats"} <= set(inspect.signature(run).parameters), case


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


def test_seed_sweep_reports_model_baseline_and_spread_from_each_run(tmp_path, capsys):
    import json

    from benchmarks import seed_sweep

    assert seed_sweep.parse_seeds("0-2,5") == [0, 1, 2, 5]
    out = tmp_path / "sweep.json"
    assert (
        seed_sweep.main(
            [
                "cloudmask",
                "--seeds",
                "0",
                "--difficulty",
                "hard",
                "--set",
                "size=100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["seed"] == 0 and set(run["comparisons"]) == {"main", "forecast"}
    main_ = run["comparisons"]["main"]
    assert main_["metric"] == "iou" and 0 <= main_["model"] <= 1
    # the best baseline is the best of the scores the run wrote, and the verdict its margin's
    best = max(v for v in main_["baselines"].values() if v is not None)
    assert main_["best_baseline"] == best
    assert main_["beats_baseline"] == (main_["model"] >= best + main_["margin"])
    summary = result["summary"]["main"]
    assert summary["model"]["mean"] == main_["model"] and summary["model"]["spread"] == 0
    assert summary["beats"] == int(main_["beats_baseline"] is True) and summary["seeds"] == 1
    row = capsys.readouterr().out
    assert f"{main_['model']:.3f} ± 0.000" in row and "| cloudmask | hard | iou |" in row
