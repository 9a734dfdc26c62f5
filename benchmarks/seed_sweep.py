"""Run a recipe over several seeds and report the model, its best baseline and the spread.

A model result is the baseline, the model and the spread over seeds on regions the model never
saw. This script runs ``xfusion.recipes.<recipe>.run`` once per seed (the seed draws the
synthetic scene and initialises the model) and reads each run's ``metrics.json``: the decisive
score of the model and of every baseline on the held-out data, and the verdict
(``beats_baseline``). Recipes with a second comparison (cloudmask's forecast) get one summary per
comparison. Usage::

    python -m benchmarks.seed_sweep water --difficulty hard --seeds 0-4
    python -m benchmarks.seed_sweep nightlights --seeds 0,1,2 --set epochs=30

writes ``benchmarks/results/seeds/<recipe>_<difficulty>.json`` (``--out`` to change) and prints
a Markdown row: baseline mean ± standard deviation, model mean ± standard deviation, how many
seeds the model beat its best baseline by the margin, and the spread (max − min) of the model's
score. Runs go to a temporary folder that is removed afterwards.
``python -m benchmarks.seed_sweep --table`` prints the table of every recorded sweep.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks._util import device, versions

RESULTS = Path(__file__).resolve().parent / "results" / "seeds"


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` → ``[0, 1, 2, 3, 4]``; ``"0,2,5"`` → ``[0, 2, 5]``."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


def comparisons(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The comparisons of one run: ``{"main": block, "<name>": nested block, ...}``."""
    block = metrics.get("baselines")
    if not isinstance(block, Mapping):
        raise KeyError("metrics.json has no 'baselines' block")
    found = {"main": dict(block)}
    for name, value in block.items():
        if isinstance(value, Mapping) and "metric" in value and "beats_baseline" in value:
            found[name] = dict(value)
    return found


def _entry(block: Mapping[str, Any]) -> dict[str, Any]:
    metric = block["metric"]
    scores = {name: s.get(metric) for name, s in block.get("scores", {}).items()}
    return {
        "metric": metric,
        "model": block.get(f"model_{metric}"),
        "baseline": block.get("baseline"),
        "best_baseline": block.get(f"baseline_{metric}"),
        "baselines": scores,
        "beats_baseline": block.get("beats_baseline"),
        "margin": block.get("margin"),
    }


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"n": 0}
    return {
        "n": len(finite),
        "mean": statistics.fmean(finite),
        "std": statistics.pstdev(finite),
        "min": min(finite),
        "max": max(finite),
        "spread": max(finite) - min(finite),
    }


def summarise(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per comparison: model and best-baseline statistics over seeds and the verdict count."""
    out: dict[str, Any] = {}
    for name in runs[0]["comparisons"]:
        entries = [r["comparisons"][name] for r in runs if name in r["comparisons"]]
        verdicts = [e["beats_baseline"] for e in entries]
        out[name] = {
            "metric": entries[0]["metric"],
            "model": _stats([e["model"] for e in entries]),
            "best_baseline": _stats([e["best_baseline"] for e in entries]),
            "baselines_chosen": sorted({str(e["baseline"]) for e in entries}),
            "beats": sum(v is True for v in verdicts),
            "no_verdict": sum(v is None for v in verdicts),
            "seeds": len(entries),
        }
    return out


def markdown(recipe: str, difficulty: str, summary: Mapping[str, Any]) -> str:
    """One Markdown table row per comparison."""
    rows = []
    for name, s in summary.items():
        m, b = s["model"], s["best_baseline"]
        if not m.get("n") or not b.get("n"):
            rows.append(f"| {recipe} | {difficulty} | {name} | no verdict | | |")
            continue
        rows.append(
            f"| {recipe} | {difficulty} | {s['metric']}{'' if name == 'main' else f' ({name})'} "
            f"| {'/'.join(s['baselines_chosen'])} {b['mean']:.3f} ± {b['std']:.3f} "
            f"| {m['mean']:.3f} ± {m['std']:.3f} (spread {m['spread']:.3f}) "
            f"| {s['beats']} of {s['seeds']} |"
        )
    return "\n".join(rows)


def sweep(
    recipe: str, seeds: Sequence[int], difficulty: str, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Run ``recipe`` once per seed; return the per-seed comparisons and their summary."""
    from xfusion import recipes

    module = recipes.get(recipe)
    runs = []
    with tempfile.TemporaryDirectory(prefix=f"sweep-{recipe}-") as tmp:
        for seed in seeds:
            values = {**overrides, "seed": seed, "difficulty": difficulty}
            values["out_dir"] = str(Path(tmp) / f"seed{seed}")
            config = module.Config.from_dict(values)
            t0 = time.perf_counter()
            result = module.run(config)
            seconds = time.perf_counter() - t0
            blocks = comparisons(result.metrics)
            runs.append(
                {
                    "seed": seed,
                    "seconds": seconds,
                    "comparisons": {k: _entry(v) for k, v in blocks.items()},
                }
            )
            main = runs[-1]["comparisons"]["main"]
            print(
                f"{recipe} {difficulty} seed {seed}: model {main['metric']} {main['model']}, "
                f"best baseline {main['baseline']} {main['best_baseline']}, "
                f"beats {main['beats_baseline']} ({seconds:.0f} s)",
                flush=True,
            )
    return {"runs": runs, "summary": summarise(runs)}


def table(folder: Path = RESULTS) -> str:
    """The Markdown table of every sweep recorded in ``folder`` (``--table``)."""
    rows = []
    for path in sorted(folder.glob("*.json")):
        d = json.loads(path.read_text())
        given = ", ".join(f"{k}={v}" for k, v in d.get("overrides", {}).items())
        rows.append(markdown(d["recipe"], f"{d['difficulty']} {given}".strip(), d["summary"]))
    return "\n".join([_HEADER, "|---|---|---|---|---|---|", *rows])


_HEADER = "| recipe | scene | score | best baseline (mean ± sd) | model (mean ± sd) | beats |"


def main(argv: Sequence[str] | None = None) -> int:
    from xfusion.cli import parse_overrides

    if argv is None:
        argv = sys.argv[1:]
    if list(argv) == ["--table"]:
        print(table())
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seed_sweep", description=__doc__)
    parser.add_argument("recipe")
    parser.add_argument("--difficulty", default="hard", choices=("standard", "hard"))
    parser.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,2,5 (default 0-4)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )
    parser.add_argument("--out", default=None, help="JSON path (default results/seeds/...)")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.overrides)
    result = sweep(args.recipe, parse_seeds(args.seeds), args.difficulty, overrides)
    result.update(
        recipe=args.recipe,
        difficulty=args.difficulty,
        overrides=overrides,
        device=device(),
        versions=versions("jax", "flax", "optax", "scikit-learn"),
    )
    path = Path(args.out) if args.out else RESULTS / f"{args.recipe}_{args.difficulty}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(_HEADER)
    print("|---|---|---|---|---|---|")
    print(markdown(args.recipe, args.difficulty, result["summary"]))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
