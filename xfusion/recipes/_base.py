"""What every recipe shares: TOML-loadable configs, the result object, resumable output writing.

A recipe is a module of ``xfusion/recipes/`` (found there by :mod:`xfusion.recipes`) with a
``Config`` dataclass composed of field groups on top of :class:`RecipeConfig`
(:mod:`xfusion.recipes._config`) and a ``run(config) -> RecipeResult`` function that ends with
:func:`write_results` (:mod:`xfusion.recipes._outputs`), its sources opened with the helpers of
:mod:`xfusion.recipes._sources`. A recipe imports all of these as one namespace,
``from xfusion.recipes import _base as recipe`` (``recipe.AreaFields``, ``recipe.write_results``
…), so its import lines are the same two whatever it uses. ``run`` reads like the workflow: each
step is a call into a small library module that can be read and tested alone
(:mod:`xfusion.models.multitemporal`, :mod:`xfusion.models.classification`), the way
stackstac's ``prepare`` → ``to_dask`` → ``stack`` reads; the config's fields are checked once,
when it is built, and passed on by name (:meth:`RecipeConfig.pick`), the way xarray normalises
its arguments once at the top. Outputs go to ``config.out_dir``:

- ``outputs.zarr``: every output cube in one Zarr store (see :func:`write_zarr`);
- ``<main>.tif``: the main map as a Cloud-Optimised GeoTIFF with its CRS;
- ``*.png`` figures, ``metrics.json`` and the saved model directory;
- ``config.toml``: the run's configuration, which loads back with :meth:`RecipeConfig.from_toml`
  (``xfusion run RECIPE --config OUT/config.toml``).

Switching ``source``
    A config built with :meth:`RecipeConfig.from_dict` (TOML files and the command line go
    through it) and a ``source`` other than ``"synthetic"`` takes that source's defaults
    (``SOURCE_DEFAULTS``) for the keys not given, and is refused, naming them all, when a key
    that names the data (``SOURCE_KEYS``: collection ids, files, asset names, region) is not
    given.

The output directory
    ``out_dir`` is created if missing and marked as an xfusion output with a small
    ``.xfusion-output.json`` file. An existing directory is used only if it is empty or holds
    that marker (an earlier xfusion output, whose files are overwritten); a directory holding
    other files is refused with :class:`~xfusion.errors.ConfigError` and nothing is written into
    it. Symbolic links inside ``out_dir`` that resolve outside it are refused too, so outputs
    never land outside ``out_dir``.

Interrupted runs and ``resume``
    ``outputs.zarr`` is written into ``outputs.zarr.partial`` next to it: first the metadata,
    then the data one chunk-aligned slab (region) at a time, each finished region recorded in
    ``outputs.zarr.partial/.xfusion-progress.json``. Only when every region is written does the
    store get an ``xfusion_complete`` root attribute and its consolidated metadata, and is
    renamed to ``outputs.zarr``: a store under the final name is always complete, a partial
    store never carries the attribute (:func:`store_is_complete`). ``metrics.json`` and the
    figures are written after the store. With ``resume=True`` (``xfusion run ... --resume``),
    a partial store left by an interrupted run with the same configuration (every field but
    ``out_dir`` and ``resume``), the same xfusion version and the same output shapes, chunks
    and dtypes is continued — its finished regions are not written again — and the result is
    bit-identical to an uninterrupted run (models are retrained with the same seed, which gives
    identical weights on the CPU). A partial store from a different configuration raises
    :class:`~xfusion.errors.ConfigError` saying what differs, before any work; without
    ``resume`` it is discarded and the run starts afresh.
"""

from __future__ import annotations

from xfusion.io.store import COMPLETE_ATTR, PROGRESS_FILE, store_is_complete, write_zarr
from xfusion.recipes._config import (
    AreaFields,
    ChunkFields,
    DateFields,
    ModelRecipeConfig,
    RecipeConfig,
    ReflectanceFields,
    SeasonFields,
    SurfaceFields,
    TrainingFields,
    UNetFields,
    at_least,
    config_keys,
    one_of,
    plain_json,
    positive,
    read_toml,
    toml_value,
)
from xfusion.recipes._metrics import aggregation_rmse
from xfusion.recipes._outputs import (
    RecipeResult,
    bands_by_year,
    baseline_block,
    plain_coords,
    prepare_out_dir,
    progress,
    save_model,
    show_progress,
    write_cog,
    write_json,
    write_outputs,
    write_results,
)
from xfusion.recipes._sources import (
    band_names,
    coarsening_factor,
    open_collections,
    require_bands,
    write_synthetic,
)

#: Everything a recipe uses, in one namespace: ``from xfusion.recipes import _base as recipe``.
__all__ = [
    "COMPLETE_ATTR",
    "PROGRESS_FILE",
    "AreaFields",
    "ChunkFields",
    "DateFields",
    "ModelRecipeConfig",
    "RecipeConfig",
    "RecipeResult",
    "ReflectanceFields",
    "SeasonFields",
    "SurfaceFields",
    "TrainingFields",
    "UNetFields",
    "aggregation_rmse",
    "at_least",
    "band_names",
    "bands_by_year",
    "baseline_block",
    "coarsening_factor",
    "config_keys",
    "one_of",
    "open_collections",
    "plain_coords",
    "plain_json",
    "positive",
    "prepare_out_dir",
    "progress",
    "read_toml",
    "require_bands",
    "save_model",
    "show_progress",
    "store_is_complete",
    "toml_value",
    "write_cog",
    "write_json",
    "write_outputs",
    "write_results",
    "write_synthetic",
    "write_zarr",
]
