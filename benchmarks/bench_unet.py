"""Blockwise U-Net inference over a 9-band cube with a 64 px halo.

xfusion's ``predict(cube, model, halo=64)`` (Dask ``blockwise`` over halo-overlapped blocks, one
jitted ``apply_tiles`` call per block, default threaded scheduler) against, on the same data,
with the same network and weights:

* **whole array** — the same jitted model applied to the whole reflect-padded array in one call;
* **PyTorch** (CPU build) sliding window of the same architecture with the same tile and halo,
  weights copied from the JAX parameters (``benchmarks/_torch_unet.py``), with its best CPU
  settings (``best_cpu_settings``: channels-last, ``inference_mode``, oneDNN, ``torch.compile``
  with weight freezing where it compiles, as many threads as cores), in fp32 and in bf16
  autocast; skipped (``"torch": "missing: ..."``) when torch is absent;
* **Earth-Engine style** — 256 px tiles with a 128 px buffer on each side (512 px inputs per
  256 px output), predicted one by one with the same jitted model.

The network is the seed architecture (``PRESETS["seed"]``: 32-64-128-256-512, centre 1024) with
random weights (BatchNorm statistics and biases randomised too, so that a wrong weight layout
would show), in eval mode. Reported besides the times: output Mpx/s and the achieved FLOP/s,
counting the convolutions' multiply-adds analytically (2 FLOP each) over the pixels each method
actually processes (halos and buffers included).

xfusion's inference options run on the same blocks: BatchNorm folded into the convolutions
(fp32), and bf16 compute; ``precisions`` lists them side by side with the maximum absolute
difference from the default fp32 prediction over the whole scene.

Correctness (also in the smoke run): the PyTorch sliding window sees exactly the tiles xfusion's
blockwise prediction sees, so the two outputs must agree to float32 rounding.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr

from benchmarks._util import case_result, versions
from benchmarks._util import measure as _measure_wall
from xfusion.models.predict import predict
from xfusion.models.unet import PRESETS, apply_tiles, build_unet, unet_params

CASE = "unet"
N_BANDS = 9


def measure(fn, *, repeats: int, warmup: int = 1) -> dict[str, Any]:
    """``benchmarks._util.measure`` plus the CPU seconds of this process for each repeat.

    On a shared, oversubscribed machine wall time mostly measures the share of the CPU a run
    gets; CPU time (``process_time``, all threads) measures the work each method needs.
    """
    cpu: list[float] = []

    def timed():
        t0 = time.process_time()
        out = fn()
        cpu.append(time.process_time() - t0)
        return out

    res = _measure_wall(timed, repeats=repeats, warmup=warmup)
    res["cpu_times_s"] = cpu[warmup:]
    res["median_cpu_s"] = statistics.median(res["cpu_times_s"])
    return res


class RandomUNet:
    """A spatial model for :func:`xfusion.models.predict.predict`: a U-Net with given weights.

    Implements the spatial-model protocol (``inference_state``, ``bands_``, ``output_bands_``,
    ``tile_multiple_``, ``default_halo_``) without training.
    """

    def __init__(self, config: Mapping[str, Any], params: Mapping[str, Any], bands, halo: int):
        self.config = dict(config)
        self.params = params
        self.bands_ = tuple(bands)
        self.n_features_in_ = len(self.bands_)
        self.output_bands_ = ("prediction",)
        self.tile_multiple_ = 2 ** len(config["architecture"]["widths"])
        self.default_halo_ = int(halo)

    def inference_state(self) -> tuple[dict[str, Any], Mapping[str, Any]]:
        return self.config, self.params

    apply_tiles = staticmethod(apply_tiles)


def random_model(widths: Sequence[int], center: int, *, seed: int = 0):
    """``(config, params)`` of a 9-band regression U-Net with random weights and statistics."""
    arch = {
        "in_channels": N_BANDS,
        "out_channels": 1,
        "widths": [int(w) for w in widths],
        "center": int(center),
        "head": "regression",
        "activation": "linear",
    }
    params = unet_params(build_unet(arch, seed=seed))
    rng = np.random.default_rng(seed + 1)

    def randomise(node: dict) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                randomise(value)
            elif key in ("bias", "mean"):
                node[key] = rng.normal(0.0, 0.1, value.shape).astype(np.float32)
            elif key in ("scale", "var"):
                node[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)

    randomise(params)
    config = {
        "architecture": arch,
        "input_mean": [0.1] * N_BANDS,
        "input_std": [0.05] * N_BANDS,
        "output": "regression",
        "target_offset": [0.0],
        "target_scale": [1.0],
    }
    return config, params


def conv_flops(architecture: Mapping[str, Any], h: int, w: int) -> int:
    """FLOPs (2 per multiply-add) of the U-Net's convolutions on one ``h × w`` input."""
    widths = [int(c) for c in architecture["widths"]]
    center = int(architecture["center"])
    total = 0

    def conv(k: int, cin: int, cout: int, level: int) -> int:
        return 2 * k * k * cin * cout * (h >> level) * (w >> level)

    cin = int(architecture["in_channels"])
    for level, c in enumerate(widths):
        total += conv(3, cin, c, level) + conv(3, c, c, level)
        cin = c
    depth = len(widths)
    total += conv(3, cin, center, depth) + conv(3, center, center, depth)
    cin = center
    for level in reversed(range(depth)):
        c = widths[level]
        total += conv(1, cin, 4 * c, level + 1)  # up-sampling 1x1 conv at the coarse level
        total += conv(3, 2 * c, c, level) + conv(3, c, c, level)
        cin = c
    total += conv(1, cin, int(architecture.get("out_channels", 1)), 0)
    return total


def make_cube(size: int, chunk: int, *, seed: int = 0) -> xr.DataArray:
    """``(band=9, y, x)`` float32 reflectance-like cube held in memory, Dask chunks of ``chunk``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    bands = [
        0.1 + 0.05 * np.sin(2 * np.pi * (k + 1) * yy) * np.cos(2 * np.pi * (k + 2) * xx)
        for k in range(N_BANDS)
    ]
    data = np.stack(bands) + rng.normal(0, 0.01, (N_BANDS, size, size))
    arr = dsa.from_array(data.astype(np.float32), chunks=(-1, chunk, chunk))
    return xr.DataArray(
        arr, dims=("band", "y", "x"), coords={"band": [f"b{k}" for k in range(N_BANDS)]}
    )


def _cpu_median(fn, repeats: int = 3) -> float:
    """Median CPU seconds (``process_time``: every thread of this process) of ``fn()``."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def _whole_array(config, params, padded: np.ndarray, halo: int) -> np.ndarray:
    out = apply_tiles(config, params, padded[None])[0]
    return out[:, halo:-halo, halo:-halo]


def _ee_style(config, params, padded: np.ndarray, tile: int, buffer: int) -> np.ndarray:
    """Earth-Engine style: every ``tile`` output from its own ``tile + 2·buffer`` request."""
    hh, ww = padded.shape[-2:]
    h, w = hh - 2 * buffer, ww - 2 * buffer
    out = np.empty((1, h, w), np.float32)
    size = tile + 2 * buffer
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            pred = apply_tiles(config, params, padded[None, :, y : y + size, x : x + size])
            out[:, y : y + tile, x : x + tile] = pred[0, :, buffer:-buffer, buffer:-buffer]
    return out


def run(*, smoke: bool = False, repeats: int = 3) -> dict:
    if smoke:
        preset, size, chunk, halo, ee_tile, ee_buffer = "small", 64, 32, 16, 16, 8
    else:
        preset, size, chunk, halo, ee_tile, ee_buffer = "seed", 2048, 512, 64, 256, 128
    widths, center = PRESETS[preset]["widths"], PRESETS[preset]["center"]
    config, params = random_model(widths, center)
    arch = config["architecture"]
    cube = make_cube(size, chunk)
    model = RandomUNet(config, params, cube.band.values, halo)
    values = cube.data.compute()
    padded = np.pad(values, ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
    padded_ee = np.pad(values, ((0, 0), (ee_buffer, ee_buffer), (ee_buffer, ee_buffer)), "reflect")
    mpx = size * size / 1e6

    lazy = predict(cube, model, halo=halo)
    variants = {  # xfusion's inference options, same blocks and tiles
        name: predict(cube, model, halo=halo, precision=precision, fold_batchnorm=True)
        for name, precision in (
            ("fp32, BatchNorm folded", "fp32"),
            ("bf16, BatchNorm folded", "bf16"),
        )
    }
    block_shape = [int(c) for c in lazy.data.chunksize]
    tile = block_shape[-1]
    # Warm-ups compile each method's shape once with a single tile, not a whole pass (the
    # whole-array method has one shape only, so its warm-up is a full pass).
    block = padded[None, :, : tile + 2 * halo, : tile + 2 * halo]
    apply_tiles(config, params, block)
    # profile: CPU seconds of the model alone on one block, against the whole blockwise pass
    block_cpu = {"xfusion": _cpu_median(lambda: apply_tiles(config, params, block))}
    ours = measure(lambda: lazy.data.compute(), repeats=repeats, warmup=0)
    options = {}
    for name, pred in variants.items():
        res = measure(lambda pred=pred: pred.data.compute(), repeats=repeats, warmup=1)
        diff = np.abs(res["result"] - ours["result"])
        options[name] = {
            **{k: v for k, v in res.items() if k != "result"},
            "max_abs_diff_vs_fp32": float(np.nanmax(diff)),
            "output_range_fp32": float(np.nanmax(ours["result"]) - np.nanmin(ours["result"])),
            "speed_vs_default": ours["median_s"] / res["median_s"],
        }
    whole = measure(lambda: _whole_array(config, params, padded, halo), repeats=repeats)
    ee_size = ee_tile + 2 * ee_buffer
    apply_tiles(config, params, padded_ee[None, :, :ee_size, :ee_size])
    ee = measure(
        lambda: _ee_style(config, params, padded_ee, ee_tile, ee_buffer),
        repeats=repeats,
        warmup=0,
    )
    competitors = {"same jitted model, whole array": whole}

    ee_name = f"Earth-Engine style {ee_tile} tiles + {ee_buffer} buffer"
    competitors[ee_name] = ee
    n_blocks = (size // tile) ** 2
    block_flops = conv_flops(arch, tile + 2 * halo, tile + 2 * halo)
    executed = {
        "xfusion": n_blocks * block_flops,
        "same jitted model, whole array": conv_flops(arch, size + 2 * halo, size + 2 * halo),
        "PyTorch CPU sliding window": n_blocks * block_flops,
        ee_name: (size // ee_tile) ** 2
        * conv_flops(arch, ee_tile + 2 * ee_buffer, ee_tile + 2 * ee_buffer),
    }

    torch_settings: dict[str, Any] = {}
    try:
        import torch

        from benchmarks._torch_unet import from_jax, sliding_window
    except ImportError:
        torch_version = "missing: PyTorch is not installed, so the PyTorch ratio is not measured"
    else:
        from benchmarks._torch_unet import best_cpu_settings

        torch_version = torch.__version__
        torch.set_num_threads(os.cpu_count() or 1)
        mean = np.asarray(config["input_mean"], np.float32)
        std = np.asarray(config["input_std"], np.float32)
        window = padded[:, : tile + 2 * halo, : tile + 2 * halo]
        net, torch_settings = best_cpu_settings(from_jax(arch, params), window[None])
        sliding_window(net, window, tile=tile, halo=halo, mean=mean, std=std)  # warm-up
        block_cpu["PyTorch CPU sliding window"] = _cpu_median(
            lambda: sliding_window(net, window, tile=tile, halo=halo, mean=mean, std=std)
        )
        comp = measure(
            lambda: sliding_window(net, padded, tile=tile, halo=halo, mean=mean, std=std),
            repeats=repeats,
            warmup=0,
        )
        competitors["PyTorch CPU sliding window"] = comp
        # PyTorch in bf16 (autocast, same settings otherwise), beside xfusion's bf16
        net16, torch16 = best_cpu_settings(from_jax(arch, params), window[None], bf16=True)
        if torch16.get("bf16") == "autocast":
            comp16 = measure(
                lambda: sliding_window(net16, padded, tile=tile, halo=halo, mean=mean, std=std),
                repeats=repeats,
                warmup=1,
            )
            torch_settings["bf16_median_s"] = comp16["median_s"]
            torch_settings["bf16_max_abs_diff_vs_fp32"] = float(
                np.max(np.abs(comp16["result"] - comp["result"]))
            )
        # same tiles, same halo, same weights: equal up to float32 rounding
        ref = comp["result"]
        scale = float(np.abs(ref).max())
        np.testing.assert_allclose(
            ours["result"][0], ref[0], rtol=0, atol=1e-4 * scale, err_msg="xfusion vs PyTorch"
        )
    for name, res in (("whole array", whole["result"]), ("EE style", ee["result"])):
        if res.shape != (1, size, size) or not np.isfinite(res).all():
            raise AssertionError(f"{name} prediction has shape {res.shape} or non-finite values")

    throughput = {}
    for name, res in (("xfusion", ours), *competitors.items()):
        flops = executed.get(name)
        throughput[name] = {
            "mpx_per_s": mpx / res["median_s"],
            "executed_gflop": None if flops is None else flops / 1e9,
            "achieved_gflop_per_s": None if flops is None else flops / res["median_s"] / 1e9,
            "gflop_per_cpu_s": None if flops is None else flops / res["median_cpu_s"] / 1e9,
        }
    cpu_ratios = {k: v["median_cpu_s"] / ours["median_cpu_s"] for k, v in competitors.items()}
    torch_s = competitors.get("PyTorch CPU sliding window", {}).get("median_s")
    precisions = {
        "fp32 (default)": {"median_s": ours["median_s"], "mpx_per_s": mpx / ours["median_s"]},
        **{
            name: {
                "median_s": res["median_s"],
                "mpx_per_s": mpx / res["median_s"],
                "max_abs_diff_vs_fp32": res["max_abs_diff_vs_fp32"],
                "output_range_fp32": res["output_range_fp32"],
            }
            for name, res in options.items()
        },
    }
    for row in precisions.values():
        row["ratio_pytorch_fp32"] = None if torch_s is None else torch_s / row["median_s"]
        if "bf16_median_s" in torch_settings:
            row["ratio_pytorch_bf16"] = torch_settings["bf16_median_s"] / row["median_s"]
    by_name = {"xfusion": ours, **competitors}
    profile = {
        name: {
            "model_cpu_s_per_block": cpu_s,
            "model_gflop_per_cpu_s": block_flops / cpu_s / 1e9,
            "model_share_of_pass_cpu": n_blocks * cpu_s / by_name[name]["median_cpu_s"],
        }
        for name, cpu_s in block_cpu.items()
    }
    if len(block_cpu) == 2:
        profile["per_block_model_cpu_ratio_torch_over_xfusion"] = (
            block_cpu["PyTorch CPU sliding window"] / block_cpu["xfusion"]
        )
    return case_result(
        CASE,
        xfusion=ours,
        competitors=competitors,
        params={
            "model": f"U-Net preset {preset!r}: widths {list(widths)}, centre {center}",
            "bands": N_BANDS,
            "shape": [N_BANDS, size, size],
            "chunks": [N_BANDS, chunk, chunk],
            "halo": halo,
            "tile": tile,
            "xfusion_block_shape": [N_BANDS, tile + 2 * halo, tile + 2 * halo],
            "ee_tile": ee_tile,
            "ee_buffer": ee_buffer,
            "useful_gflop_per_output_px": conv_flops(arch, 1024, 1024) / 1024**2 / 1e9,
            "size_note": "smoke" if smoke else "full size",
            "threads": os.cpu_count(),
            "smoke": smoke,
            "repeats": repeats,
        },
        packages=("jax", "jaxlib", "flax"),
        extra={
            "torch": torch_version,
            "torch_settings": torch_settings,
            "inference_options": options,
            "precisions": precisions,
            "precision_note": "the same blocks and tiles in each row; max_abs_diff_vs_fp32 is "
            "the largest absolute difference from the default fp32 prediction over the whole "
            "scene (output_range_fp32 gives its scale); bf16 pays off only where the CPU's "
            "bfloat16 units are used by XLA (not the case for XLA:CPU's convolutions here)",
            "throughput": throughput,
            "cpu_time_ratios": cpu_ratios,
            "profile": profile,
            "profile_note": "CPU seconds (all threads) of the network alone on one "
            f"{tile + 2 * halo}² block, and its share of the whole pass's CPU time: a share "
            "near 1 means the blockwise machinery (Dask, halo exchange, stitching) costs "
            "nothing and the ratio is set by the convolutions",
            "target": "ratios: whole array >= 0.85, PyTorch >= 2, Earth-Engine style >= 1.7",
        },
    )


def run_gpu(*, smoke: bool = False, repeats: int = 3) -> dict:
    """GPU mode (``python -m benchmarks unet --device gpu``): Mpx/s model-only and end to end.

    * **model only**: the jitted network (BatchNorm folded) applied to a batch of blocks already
      on the GPU, in fp32 and bf16; output (interior) pixels per second;
    * **end to end**: ``predict(cube, model, precision=..., fold_batchnorm=True)`` over a cube in
      host memory on Dask's threaded scheduler with 4 workers, so at least 2 blocks are in
      flight and one block's host→device copy overlaps another's compute; includes Dask
      feeding, halo exchange, host↔device copies and stitching.

    Raises :class:`benchmarks._util.DeviceError` (before any timing) where JAX runs on the CPU.
    """
    import jax

    from benchmarks._util import require_gpu
    from xfusion.models import inference

    gpu = require_gpu()
    preset = "small" if smoke else "seed"
    size, chunk, halo, batch = (256, 128, 32, 2) if smoke else (8192, 1024, 64, 4)
    widths, center = PRESETS[preset]["widths"], PRESETS[preset]["center"]
    config, params = random_model(widths, center)
    cube = make_cube(size, chunk)
    model = RandomUNet(config, params, cube.band.values, halo)
    block = chunk + 2 * halo
    rng = np.random.default_rng(0)
    x_host = (0.1 + 0.05 * rng.standard_normal((batch, N_BANDS, block, block))).astype(np.float32)
    x_dev = jax.device_put(x_host)
    mpx = size * size / 1e6
    results: dict[str, Any] = {}
    reference = None
    for precision in ("fp32", "bf16"):
        c, p = inference.inference_options(config, params, precision=precision, fold=True)
        apply = inference.device_apply(c, p)
        apply(x_dev).block_until_ready()  # compile
        model_only = _measure_wall(
            lambda apply=apply: apply(x_dev).block_until_ready(), repeats=max(repeats, 5)
        )
        pred = predict(cube, model, halo=halo, precision=precision, fold_batchnorm=True)
        end_to_end = _measure_wall(
            lambda pred=pred: pred.data.compute(scheduler="threads", num_workers=4),
            repeats=repeats,
        )
        out = end_to_end["result"]
        if reference is None:
            reference = out
        model_mpx = batch * chunk * chunk / 1e6 / model_only["median_s"]
        results[precision] = {
            "model_only_mpx_per_s": model_mpx,
            "model_only_median_s_per_batch": model_only["median_s"],
            "end_to_end_mpx_per_s": mpx / end_to_end["median_s"],
            "end_to_end_median_s": end_to_end["median_s"],
            "end_to_end_times_s": end_to_end["times_s"],
            "end_to_end_share_of_model_only": mpx / end_to_end["median_s"] / model_mpx,
            "max_abs_diff_vs_fp32": float(np.nanmax(np.abs(out - reference))),
        }
    if jax.devices()[0].platform == "cpu":  # never report CPU numbers as GPU ones
        raise AssertionError("JAX moved to the CPU during the GPU benchmark")
    e2e = {"median_s": results["bf16"]["end_to_end_median_s"], "peak_mem_mb": 0.0}
    return {
        "case": CASE,
        "device": gpu,
        "params": {
            "mode": "gpu",
            "model": f"U-Net preset {preset!r}: widths {list(widths)}, centre {center}",
            "shape": [N_BANDS, size, size],
            "chunks": [N_BANDS, chunk, chunk],
            "halo": halo,
            "model_only_batch": [batch, N_BANDS, block, block],
            "dask_workers": 4,
            "smoke": smoke,
            "repeats": repeats,
        },
        "versions": versions("jax", "jaxlib", "flax"),
        "xfusion": {**e2e, "times_s": results["bf16"]["end_to_end_times_s"]},
        "competitors": {},
        "ratios": {},
        "gpu": results,
        "target": "model only >= 200 Mpx/s (bf16, seed U-Net, one H100/H200); end to end "
        ">= 50 % of model only",
    }


if __name__ == "__main__":
    result = run(smoke="--smoke" in sys.argv)
    out = Path(__file__).resolve().parent / "results" / f"{CASE}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
