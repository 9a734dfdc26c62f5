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
