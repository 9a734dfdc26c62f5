"""What a recipe run writes and returns: one writer, the result object, the baseline block.

:func:`write_results` writes every output of a run in one order, the same for every recipe:

1. ``outputs.zarr``: every output cube (resumable, see :mod:`xfusion.recipes._base`);
2. ``<name>.tif``: the main map as a Cloud-Optimised GeoTIFF (``cog=(name, cube)``);
3. ``model/<name>``: every model, each saved by its own ``save`` (no pickle);
4. ``config.toml``: the configuration, loadable with ``Config.from_toml`` or ``--config``;
5. the PNG figures (``figures``, a function drawing them, called only when
   ``config.figures``);
6. ``metrics.json``: the metrics, with the ``baselines`` block and ``beats_baseline``.

and returns the :class:`RecipeResult`. Every recipe compares its model with baselines on the
same held-out data: :func:`baseline_block` builds that comparison from the scores, and
:meth:`RecipeResult.summary` (what ``xfusion run`` prints) says whether the model beat them.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xfusion._files import claim_output_dir
from xfusion.grids import plain_coords  # re-exported: the recipes' recipe.plain_coords
from xfusion.io.store import check_resumable, write_zarr
from xfusion.recipes._config import RecipeConfig

__all__ = [
    "RecipeResult",
    "bands_by_year",
    "baseline_block",
    "plain_coords",
    "prepare_out_dir",
    "progress",
    "save_model",
    "show_progress",
    "write_cog",
    "write_json",
    "write_outputs",
    "write_results",
]


@dataclasses.dataclass
class RecipeResult:
    """What a recipe run returns: metrics, output cubes, and the paths it wrote."""

    recipe: str
    metrics: dict[str, Any]
    cubes: dict[str, xr.DataArray]
    figures: dict[str, Path]
    out_dir: Path
    files: dict[str, Path] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """Return a small plain-text table of the metrics, then the baseline comparison.

        Examples
        --------
        >>> block = baseline_block({"rmse": 0.1}, {"mean": {"rmse": 0.3}}, metric="rmse")
        >>> result = RecipeResult("demo", {"rmse": 0.1, **block}, {}, {}, Path("out"))
        >>> print(result.summary())
        demo — outputs in out
          rmse            0.1
          beats_baseline  True
          baselines       model rmse 0.1 vs best baseline 'mean' 0.3: beats it
        """
        shown = {k: v for k, v in self.metrics.items() if k != "baselines"}
        width = max((len(k) for k in [*shown, "baselines"]), default=0)
        lines = [f"{self.recipe} — outputs in {self.out_dir}"]
        for key, value in shown.items():
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"  {key:<{width}}  {text}")
        block = self.metrics.get("baselines")
        if isinstance(block, Mapping) and block.get("comparable") is False:
            lines.append(f"  {'baselines':<{width}}  no verdict: {block['reason']}")
        elif isinstance(block, Mapping) and "metric" in block:
            metric = block["metric"]
            verdict = "beats it" if block["beats_baseline"] else "does NOT beat it"
            lines.append(
                f"  {'baselines':<{width}}  model {metric} {block[f'model_{metric}']:.4g} vs best "
                f"baseline {block['baseline']!r} {block[f'baseline_{metric}']:.4g}: {verdict}"
            )
        return "\n".join(lines)


def baseline_block(
    model_scores: Mapping[str, float],
    baseline_scores: Mapping[str, Mapping[str, float]],
    *,
    metric: str,
    higher_is_better: bool | None = None,
    margin: float | None = None,
) -> dict[str, Any]:
    """Return the metrics entries comparing a model with its baselines on the same data.

    The comparison is :func:`xfusion.models.baselines.compare`'s: the best baseline by
    ``metric``, and whether the model beats it by ``margin`` (relative for lower-is-better
    metrics, absolute for higher-is-better ones; its defaults when ``None``).

    Parameters
    ----------
    model_scores : mapping
        The model's scores on the held-out data (must hold ``metric``).
    baseline_scores : mapping
        Per baseline name, its scores on the same data.
    metric : str
        The score that decides (``"rmse"``, ``"f1"``, ``"iou"`` …).
    higher_is_better : bool, optional
        Whether a larger ``metric`` is better (inferred for the usual metrics).
    margin : float, optional
        How much better than the best baseline the model must be to beat it.

    Returns
    -------
    dict
        ``{"baselines": {"metric", "scores", "baseline", "baseline_<metric>",
        "model_<metric>", "beats_baseline", "margin", ...}, "beats_baseline": bool}``: the
        ``baselines`` argument of :func:`write_results`, which adds it to the metrics. Where
        the model's score, or every baseline's, is undefined (NaN or missing: an IoU on a scene
        without the class), there is no verdict: ``beats_baseline`` is ``None`` and the block
        says ``"comparable": False`` and why, instead of failing the run.

    Examples
    --------
    >>> block = baseline_block({"rmse": 0.2}, {"a": {"rmse": 0.3}, "b": {"rmse": 0.25}},
    ...                        metric="rmse")
    >>> block["beats_baseline"], block["baselines"]["baseline"]
    (True, 'b')
    >>> none = baseline_block({"iou": float("nan")}, {"otsu": {"iou": 0.0}}, metric="iou")
    >>> none["beats_baseline"], none["baselines"]["comparable"]
    (None, False)
    """
    from xfusion.models.baselines import compare

    scores = {name: dict(values) for name, values in baseline_scores.items()}
    value = model_scores.get(metric)
    finite = [n for n, v in scores.items() if _finite(v.get(metric))]
    if not _finite(value) or not finite:
        # e.g. an IoU on a scene without a cloud in the map or the reference: the score is
        # undefined, so there is no verdict; the run still writes its outputs and says so
        who = "the model's" if not _finite(value) else "every baseline's"
        block = {
            "metric": metric,
            "scores": scores,
            f"model_{metric}": value if _finite(value) else None,
            "beats_baseline": None,
            "comparable": False,
            "reason": f"{who} {metric} is undefined on these data (no pixel of the class in "
            "the map or in the reference, or no scored pixel), so there is no verdict",
        }
        return {"baselines": block, "beats_baseline": None}
    verdict = compare(
        dict(model_scores),
        {name: dict(scores) for name, scores in baseline_scores.items()},
        metric=metric,
        margin=margin,
        higher_is_better=higher_is_better,
    )
    block = {
        "metric": metric,
        "scores": scores,
        **{key: value for key, value in verdict.items() if key != "baselines"},
    }
    return {"baselines": block, "beats_baseline": bool(verdict["beats_baseline"])}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float | np.floating | np.integer) and bool(np.isfinite(value))


def write_results(
    config: RecipeConfig,
    out: Path,
    cubes: Mapping[str, xr.DataArray],
    metrics: Mapping[str, Any],
    *,
    baselines: Mapping[str, Any],
    cog: tuple[str, xr.DataArray] | None = None,
    models: Mapping[str, Any] | None = None,
    figures: Callable[[], Mapping[str, Path]] | None = None,
    chunks: int | None = None,
) -> RecipeResult:
    """Write every output of a recipe run (see the module's docstring) and return the result.

    This function computes: it writes ``cubes`` (computing those that are lazy).

    Parameters
    ----------
    config : RecipeConfig
        The run's configuration (``recipe_name()``, ``resume``, ``figures``).
    out : Path
        The output directory, from :func:`prepare_out_dir`.
    cubes : mapping of str to DataArray
        Every output cube, written to ``outputs.zarr`` and returned in the result.
    metrics : mapping
        The metrics; ``baselines`` is added before ``metrics.json`` is written.
    baselines : mapping
        The output of :func:`baseline_block`.
    cog : (str, DataArray), optional
        ``(name, cube)``: the main map, written as ``name.tif`` (``(band, y, x)`` or ``(y, x)``).
    models : mapping of str to model, optional
        Saved as ``model/<name>`` with their ``save`` method (files key ``model_<name>``).
    figures : callable, optional
        Draws the figures and returns their paths; called only when ``config.figures``.
    chunks : int, optional
        Chunk size along ``y`` and ``x`` of ``outputs.zarr`` for cubes held in memory.
    """
    metrics = {**metrics, **baselines}
    files: dict[str, Path] = {"zarr": write_outputs(cubes, out, config, chunks=chunks)}
    if cog is not None:
        name, cube = cog
        files["cog"] = write_cog(cube, out / f"{name}.tif")
    if models:
        (out / "model").mkdir(exist_ok=True)
        for name, model in models.items():
            files[f"model_{name}"] = save_model(model, out / "model" / name)
    files["config"] = config.to_toml(out / "config.toml")
    drawn = dict(figures()) if figures is not None and config.figures else {}
    files["metrics"] = write_json(metrics, out / "metrics.json")
    return RecipeResult(config.recipe_name(), metrics, dict(cubes), drawn, out, files)


def bands_by_year(maps: xr.DataArray) -> xr.DataArray:
    """Return ``(time, 1, y, x)`` maps as ``(band, y, x)``: a band per time step, named by its year.

    The shape of a multi-year map written as one COG (``cog=("name", bands_by_year(maps))``),
    with NaN as its nodata. Lazy.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr
    >>> maps = xr.DataArray(np.zeros((2, 1, 3, 4)), dims=("time", "band", "y", "x"),
    ...                     coords={"time": pd.to_datetime(["2015-07-01", "2019-07-01"])})
    >>> cube = bands_by_year(maps)
    >>> cube.dims, cube.band.values.tolist()
    (('band', 'y', 'x'), ['2015', '2019'])
    """
    import pandas as pd

    years = [str(pd.Timestamp(t).year) for t in maps.time.values]
    per_year = maps.isel(band=0, drop=True).drop_vars("source", errors="ignore")
    per_year = per_year.rename(time="band").assign_coords(band=years).transpose("band", "y", "x")
    return per_year.rio.write_nodata(np.nan, encoded=False)


def save_model(model: Any, path: Path) -> Path:
    """Save ``model`` with its own ``save`` method into the directory ``path``.

    Models whose ``save`` takes a ``fmt`` are saved as msgpack: NetCDF weights cannot be written
    under a distributed client (xarray asks the scheduler for a lock named after the in-memory
    file).
    """
    save = model.save
    if "fmt" in inspect.signature(save).parameters:
        return Path(save(path, fmt="msgpack"))
    return Path(save(path))


_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("xfusion_progress", default=False)


def show_progress() -> bool:
    """Return whether recipes show progress bars now (inside :func:`progress`)."""
    return _PROGRESS.get()


@contextlib.contextmanager
def progress(enabled: bool = True, *, minimum: float = 1.0) -> Iterator[None]:
    """Show the progress of recipe runs on stderr while inside this context.

    Training epochs get a tqdm bar, and every Dask computation on the local schedulers that
    takes longer than ``minimum`` seconds a Dask progress bar (a distributed cluster has its
    dashboard instead). Outside this context recipes run silently; ``xfusion run`` and
    ``xfusion demo`` enter it unless given ``--quiet``.

    Examples
    --------
    >>> show_progress()
    False
    >>> with progress():
    ...     show_progress()
    True
    """
    token = _PROGRESS.set(bool(enabled))
    try:
        if enabled:
            from dask.diagnostics import ProgressBar

            with ProgressBar(minimum=minimum, out=sys.stderr):
                yield
        else:
            yield
    finally:
        _PROGRESS.reset(token)


def prepare_out_dir(out_dir: str | os.PathLike[str], *, config: RecipeConfig | None = None) -> Path:
    """Create or reuse ``out_dir`` as the recipe's output directory.

    The directory is refused (:class:`~xfusion.errors.ConfigError`, nothing written) when it
    exists, is not empty and is not an xfusion output, or holds a symbolic link leading outside
    it; it is a :class:`~xfusion.errors.SourceError` when it cannot be written. With ``config``
    and ``config.resume``, a partial ``outputs.zarr`` left by a run with a different
    configuration raises :class:`~xfusion.errors.ConfigError` here, before any work is done.

    Examples
    --------
    >>> import tempfile
    >>> out = prepare_out_dir(tempfile.mkdtemp())
    >>> [p.name for p in out.iterdir()]
    ['.xfusion-output.json']
    """
    owner = config.recipe_name() if config is not None else "recipe"
    out = claim_output_dir(
        out_dir, owner=owner, message="output directory {path} is not writable: {reason}"
    )
    if config is not None and config.resume:
        check_resumable(out / "outputs.zarr", config.fingerprint())
    return out


def write_outputs(
    cubes: Mapping[str, xr.DataArray],
    out_dir: Path,
    config: RecipeConfig,
    *,
    chunks: int | None = None,
) -> Path:
    """Write a recipe's output cubes to ``out_dir/outputs.zarr`` with :func:`write_zarr`.

    Resumes when ``config.resume`` is set; the store is identified by ``config.fingerprint()``.
    ``chunks``: the store's chunk size along ``y`` and ``x`` for cubes held in memory.
    """
    return write_zarr(
        dict(cubes),
        Path(out_dir) / "outputs.zarr",
        resume=config.resume,
        fingerprint=config.fingerprint(),
        chunks=None if chunks is None else {"y": chunks, "x": chunks},
    )


def write_cog(cube: xr.DataArray, path: str | os.PathLike[str]) -> Path:
    """Write a ``(band, y, x)`` or ``(y, x)`` cube as a Cloud-Optimised GeoTIFF, atomically."""
    final = Path(path)
    tmp = final.with_name(f".{final.stem}.partial-{uuid.uuid4().hex}{final.suffix}")
    try:
        cube.rio.to_raster(tmp, driver="COG", compress="DEFLATE")
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def write_json(data: Any, path: str | os.PathLike[str]) -> Path:
    """Write JSON atomically."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, final)
    return final
