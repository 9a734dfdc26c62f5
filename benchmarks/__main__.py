"""Run the benchmark suite: ``python -m benchmarks [CASE ...] [--smoke] [--repeats N]``.

``--device gpu`` (``pip install ".[gpu]"`` on a CUDA machine) exits with status 2 and a message,
before timing anything, where JAX runs on the CPU; results go to ``<case>_gpu.json``.

Every case times xfusion and its competitors in the same run on the same data, writes
``benchmarks/results/<case>.json`` and the summary table ``benchmarks/results/summary.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import pkgutil
import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def discover() -> list[str]:
    """Names of the available cases (modules ``benchmarks/bench_<case>.py``)."""
    return sorted(
        m.name[len("bench_") :]
        for m in pkgutil.iter_modules([str(HERE)])
        if m.name.startswith("bench_")
    )


def run_case(case: str, *, smoke: bool, repeats: int, device: str = "cpu") -> dict:
    """Import and run one case.

    With ``device="gpu"`` a case's ``run_gpu`` runs where it has one (``unet``: model-only and
    end-to-end Mpx/s); other cases run as they are, on JAX's default device, the GPU.
    """
    module = importlib.import_module(f"benchmarks.bench_{case}")
    if device == "gpu" and hasattr(module, "run_gpu"):
        return module.run_gpu(smoke=smoke, repeats=repeats)
    return module.run(smoke=smoke, repeats=repeats)


def check_result(case: str, result: dict) -> list[str]:
    """Return what is wrong with one case's result (an empty list when nothing is).

    A result names its case, times xfusion (a positive median) and gives every competitor a
    positive, finite ratio. ``main`` refuses (exit status 1) a run with a wrong result, so
    ``python -m benchmarks --smoke`` (run by the README test in CI) checks every case.
    """
    problems = []
    if result.get("case") != case:
        problems.append(f"names case {result.get('case')!r}, expected {case!r}")
    median = (result.get("xfusion") or {}).get("median_s")
    if not (isinstance(median, int | float) and math.isfinite(median) and median > 0):
        problems.append(f"xfusion median_s is {median!r}, expected a positive number")
    for name, ratio in (result.get("ratios") or {}).items():
        if not (isinstance(ratio, int | float) and math.isfinite(ratio) and ratio > 0):
            problems.append(f"ratio against {name!r} is {ratio!r}, expected a positive number")
    return problems


def summary_table(results: list[dict]) -> str:
    """Markdown table: one row per (case, competitor) with the ratio competitor ÷ xfusion."""
    rows = [
        "| case | xfusion median (s) | competitor | competitor median (s) | ratio | "
        "xfusion peak MB | competitor peak MB | device |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        xf = res["xfusion"]
        comps = res["competitors"] or {"—": None}
        for name, comp in comps.items():
            ratio = res["ratios"].get(name)
            rows.append(
                f"| {res['case']} | {xf['median_s']:.3f} | {name} | "
                f"{comp['median_s']:.3f} | {ratio:.2f}× | {xf['peak_mem_mb']:.0f} | "
                f"{comp['peak_mem_mb']:.0f} | {res['device']} |"
                if comp is not None
                else f"| {res['case']} | {xf['median_s']:.3f} | — | — | — | "
                f"{xf['peak_mem_mb']:.0f} | — | {res['device']} |"
            )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("cases", nargs="*", help=f"cases to run (default all: {discover()})")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat, no files")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="gpu: refuse to start unless JAX runs on a GPU (pip install '.[gpu]'); results "
        "go to <case>_gpu.json",
    )
    args = parser.parse_args(argv)
    cases = args.cases or discover()
    unknown = sorted(set(cases) - set(discover()))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; available: {discover()}")
    if args.device == "gpu":
        from benchmarks._util import DeviceError, require_gpu

        try:
            print(f"GPU: {require_gpu()}", flush=True)
        except DeviceError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return 2
    suffix = "_gpu" if args.device == "gpu" else ""
    results, failed = [], []
    for case in cases:
        print(f"== {case}", flush=True)
        try:
            res = run_case(
                case,
                smoke=args.smoke,
                repeats=1 if args.smoke else args.repeats,
                device=args.device,
            )
        except unittest.SkipTest as why:  # a case whose data is absent (../shared/data)
            print(f"skipped: {why}", flush=True)
            continue
        problems = check_result(case, res)
        if problems:
            print(f"error: case {case!r}: " + "; ".join(problems), file=sys.stderr, flush=True)
            failed.append(case)
            continue
        results.append(res)
        print(json.dumps(res.get("gpu", res["ratios"]), indent=1), flush=True)
        if not args.smoke:
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"{case}{suffix}.json").write_text(json.dumps(res, indent=2, default=str))
    if not args.smoke:
        every = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
        (RESULTS / "summary.md").write_text(summary_table(every))
        print(summary_table(every))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
