"""Timing, memory and environment helpers shared by the benchmark cases.

Each case module ``benchmarks/bench_<case>.py`` exposes ``run(*, smoke=False, repeats=3) -> dict``
and builds its result with :func:`case_result`; ``python -m benchmarks`` runs them all.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil


class PeakRSS:
    """Sample this process's resident memory in a thread; ``peak_mb`` above the starting RSS."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.start_rss = 0
        self.peak_rss = 0

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.start_rss = self.peak_rss = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return (self.peak_rss - self.start_rss) / 2**20


def measure(fn: Callable[[], Any], *, repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; median seconds and peak MB."""
    out = None
    for _ in range(warmup):
        out = fn()
    times, peaks = [], []
    for _ in range(repeats):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        peaks.append(mem.peak_mb)
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_mem_mb": max(peaks),
        "result": out,
    }


def measure_interleaved(fns: dict, *, repeats: int) -> tuple[dict, dict[str, float]]:
    """:func:`measure` each function once per round, round-robin, ``repeats`` rounds.

    Interleaving spreads slow phases of a shared machine over every contender instead of
    whichever ran during them. Returns the merged measurements and the median process CPU
    seconds (all threads, ``time.process_time``) of each function's timed runs.
    """
    rounds: dict[str, list[dict]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():

            def timed(fn=fn, sink=cpu[name]):
                start = time.process_time()
                out = fn()
                sink.append(time.process_time() - start)
                return out

            rounds[name].append(measure(timed, repeats=1, warmup=1 if r == 0 else 0))
    merged = {}
    for name, runs in rounds.items():
        times = [t for m in runs for t in m["times_s"]]
        merged[name] = {
            "median_s": statistics.median(times),
            "times_s": times,
            "peak_mem_mb": max(m["peak_mem_mb"] for m in runs),
            "result": runs[-1]["result"],
        }
    # the first call of each function is its untimed warm-up
    cpu_s = {name: statistics.median(times[1:]) for name, times in cpu.items()}
    return merged, cpu_s


def device() -> str:
    """A short description of the machine the benchmark ran on."""
    try:
        import jax

        devs = jax.devices()
        accel = f"{devs[0].platform}:{devs[0].device_kind}" if devs else "none"
    except Exception:  # jax missing or broken: report the CPU only
        accel = "cpu"
    return f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores, jax {accel}"


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of the named packages (``'missing'`` where absent)."""
    import xfusion

    found = {"xfusion": xfusion.__version__}
    try:
        found["xfusion_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an export)
        found["xfusion_commit"] = os.environ.get("XFUSION_COMMIT", "unknown")
    for name in ("numpy", "dask", "xarray", *packages):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def case_result(
    case: str,
    *,
    xfusion: dict[str, Any],
    competitors: dict[str, dict[str, Any]],
    params: dict[str, Any],
    packages: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble one case's JSON-able result; ratio = competitor median ÷ xfusion median."""

    def clean(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m.items() if k != "result"}

    return {
        "case": case,
        "params": params,
        "device": device(),
        "versions": versions(*packages),
        "xfusion": clean(xfusion),
        "competitors": {k: clean(v) for k, v in competitors.items()},
        "ratios": {k: v["median_s"] / xfusion["median_s"] for k, v in competitors.items()},
        **(extra or {}),
    }


class DeviceError(RuntimeError):
    """The requested device is not what JAX runs on (e.g. ``--device gpu`` on a CPU-only JAX)."""


def require_gpu() -> str:
    """Return ``platform:device_kind`` of JAX's first GPU; raise :class:`DeviceError` without one.

    A CPU-only jaxlib, a CUDA jaxlib without a visible GPU or driver, and a JAX that fell back
    to its CPU backend all count as no GPU: a GPU benchmark must never time the CPU.
    """
    try:
        import jax

        backend = jax.default_backend()
        devices = jax.devices()
    except Exception as err:  # jax missing or its backend failed to start
        raise DeviceError(f"--device gpu: JAX has no usable backend ({err})") from err
    if backend not in ("gpu", "cuda", "rocm") or devices[0].platform == "cpu":
        raise DeviceError(
            f"--device gpu: JAX runs on {backend!r} ({devices[0].device_kind}), not a GPU; it "
            "fell back to the CPU. On a CUDA machine install the GPU build with "
            "pip install '.[gpu]' (jax[cuda12]) and check that nvidia-smi sees the GPU"
        )
    return f"{devices[0].platform}:{devices[0].device_kind}"
