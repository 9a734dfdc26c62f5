"""Missing sensors for multi-sensor models: fill with validity bands, modality dropout.

A fusion model (SAR + optical, say) meets pixels where one sensor has no data: clouds over the
optical, SAR no-data strips. A network that simply outputs no data wherever any input band is
missing gives no answer exactly where the other sensor could; one that fills the gap silently
cannot tell a filled value from a real one. :func:`fill_with_validity` fills each missing band
with a fixed value (its training mean) and appends one ``<group>_valid`` band per sensor group
(1 where every band of the group is finite, else 0), so the model sees which sensor it may
trust. :func:`modality_dropout` adds copies of the training patches with one sensor group
blanked (filled, validity 0), so the model learns to classify from each sensor alone and does
not lean on one of them where it misleads (SAR-dark wet soil and radar shadow, cloud shadow in
the optical). :func:`sensor_groups` keeps the groups among the bands one model reads (a
SAR-only model has no optical group), and :func:`training_patches` prepares the patches of such
a model: validity bands, with or without the dropout copies.

``fill_with_validity`` is lazy; ``modality_dropout`` and ``training_patches`` work on patches in
memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from xfusion.errors import BandError, InputError
from xfusion.validate import require_bands

__all__ = [
    "band_means",
    "fill_with_validity",
    "modality_dropout",
    "sensor_groups",
    "training_patches",
    "validity_band",
]


def validity_band(group: str) -> str:
    """Name of a group's validity band: ``"<group>_valid"``."""
    return f"{group}_valid"


def _check_groups(bands: Sequence[str], groups: Mapping[str, Sequence[str]]) -> None:
    if not groups:
        raise InputError("groups must name at least one sensor group, e.g. {'optical': [...]}")
    for name, members in groups.items():
        if not members:
            raise InputError(f"sensor group {name!r} has no bands; expected at least one")
        require_bands(bands, members, by=f"sensor group {name!r}")
        if validity_band(name) in bands:
            raise BandError(
                f"the cube already has a band {validity_band(name)!r}; expected raw bands"
            )


def band_means(patches: xr.DataArray) -> dict[str, float]:
    """Mean of every band over its finite pixels of in-memory patches ``(…, band, y, x)``.

    The fill values of :func:`fill_with_validity`: a U-Net standardises with the same means, so
    a filled pixel is 0 after standardisation.

    Raises
    ------
    InputError
        A band has no finite pixel.
    """
    values = np.asarray(patches.transpose("band", ...).values, dtype=np.float64)
    out = {}
    for name, band in zip(patches["band"].values.tolist(), values, strict=True):
        finite = band[np.isfinite(band)]
        if finite.size == 0:
            raise InputError(f"band {name!r} has no finite pixel to take its mean from")
        out[str(name)] = float(finite.mean())
    return out


def fill_with_validity(
    cube: xr.DataArray, groups: Mapping[str, Sequence[str]], fill: Mapping[str, float]
) -> xr.DataArray:
    """Fill missing values and append one validity band per sensor group (lazy).

    Parameters
    ----------
    cube : xarray.DataArray
        ``(…, band, y, x)``; dask-backed cubes stay lazy.
    groups : mapping of str to sequence of str
        Sensor groups, e.g. ``{"sar": ["HH", "HV"], "optical": ["Red", "NIR"]}``.
    fill : mapping of str to float
        Value for the missing pixels of each band (every band of the cube), e.g.
        :func:`band_means` of the training patches.

    Returns
    -------
    xarray.DataArray
        The bands, NaN replaced by their fill value, followed by ``<group>_valid`` per group:
        1 where every band of the group is finite, 0 elsewhere (float32).

    Raises
    ------
    BandError
        A group names a band not in the cube, or the cube has a validity band already.
    InputError
        An empty group, or a band without a fill value.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> cube = xr.DataArray(np.array([[[1.0, np.nan]], [[3.0, 5.0]]], np.float32),
    ...                     dims=("band", "y", "x"), coords={"band": ["opt", "sar"]})
    >>> out = fill_with_validity(cube, {"optical": ["opt"]}, {"opt": 2.0, "sar": 0.0})
    >>> out.band.values.tolist(), out.values[:, 0].tolist()
    (['opt', 'sar', 'optical_valid'], [[1.0, 2.0], [3.0, 5.0], [1.0, 0.0]])
    """
    bands = [str(b) for b in cube["band"].values]
    _check_groups(bands, groups)
    unknown = [b for b in bands if b not in fill]
    if unknown:
        raise InputError(f"no fill value for bands {unknown}; expected one for every band")
    values = xr.DataArray(
        np.array([fill[b] for b in bands], dtype=np.float32), dims="band", coords={"band": bands}
    )
    filled = cube.fillna(values).astype(np.float32)
    flags = [
        cube.sel(band=list(members)).notnull().all("band").astype(np.float32)
        .expand_dims(band=[validity_band(name)])
        for name, members in groups.items()
    ]  # fmt: skip
    out = xr.concat([filled, *flags], dim="band", coords="minimal", compat="override")
    out = out.transpose(*cube.dims)
    if out.chunks is not None:
        out = out.chunk({"band": -1})
    out.attrs = dict(cube.attrs)
    return out.rename(cube.name)


def modality_dropout(
    patches: xr.Dataset,
    groups: Mapping[str, Sequence[str]],
    fill: Mapping[str, float],
    *,
    inputs: str = "inputs",
) -> xr.Dataset:
    """Training patches with validity bands, plus one copy per group with that group missing.

    Every patch appears ``1 + len(groups)`` times: as it is, and once per sensor group with
    that group's bands set missing (filled, validity 0). The copies keep the patches' other
    variables and coordinates (their ``row``/``col`` too, so a spatial validation split keeps a
    patch and its copies on the same side). Works on patches in memory (it computes nothing).

    Parameters
    ----------
    patches : xarray.Dataset
        Patches with an ``inputs`` variable ``(sample, band, y, x)`` (as from
        ``cube.xf.patches``).
    groups, fill
        As for :func:`fill_with_validity`.
    inputs : str
        Name of the input variable.

    Returns
    -------
    xarray.Dataset
        The patches with ``inputs`` through :func:`fill_with_validity`, concatenated along
        ``sample`` with the copies.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> x = xr.DataArray(np.ones((2, 2, 4, 4), np.float32), dims=("sample", "band", "y", "x"),
    ...                  coords={"band": ["HH", "NIR"]})
    >>> p = xr.Dataset({"inputs": x, "target": x.isel(band=0, drop=True)})
    >>> out = modality_dropout(p, {"sar": ["HH"], "optical": ["NIR"]}, {"HH": 0.5, "NIR": 0.2})
    >>> out.sizes["sample"], out["inputs"].band.values.tolist()
    (6, ['HH', 'NIR', 'sar_valid', 'optical_valid'])
    >>> out["inputs"].isel(sample=2).values[:, 0, 0].tolist()  # the SAR-less copy
    [0.5, 1.0, 0.0, 1.0]
    """
    if inputs not in patches:
        raise InputError(f"patches have no {inputs!r} variable; expected (sample, band, y, x)")
    x = patches[inputs]
    if "sample" not in x.dims:
        raise InputError(f"patches {inputs!r} need a 'sample' dim; got dims {x.dims}")
    rest = patches.drop_vars([inputs, "band"], errors="ignore")
    copies = [rest.assign({inputs: fill_with_validity(x, groups, fill)})]
    for members in groups.values():
        blank = x.copy(deep=True)
        blank.loc[{"band": list(members)}] = np.nan
        copies.append(rest.assign({inputs: fill_with_validity(blank, groups, fill)}))
    return xr.concat(copies, dim="sample", data_vars="all", coords="minimal", compat="override")


def sensor_groups(
    groups: Mapping[str, Sequence[str]], bands: Sequence[str]
) -> dict[str, list[str]]:
    """Return the sensor groups restricted to ``bands``; a group with none of them is left out.

    The groups of a model that reads only some bands (a SAR-only model of a SAR + optical
    cube has no optical group, so no ``optical_valid`` band).

    Examples
    --------
    >>> sensor_groups({"sar": ["HH", "HV"], "optical": ["Red"]}, ["HH", "HV", "DEM"])
    {'sar': ['HH', 'HV']}
    """
    keep = {str(b) for b in bands}
    restricted = {name: [b for b in members if b in keep] for name, members in groups.items()}
    return {name: members for name, members in restricted.items() if members}


def training_patches(
    patches: xr.Dataset,
    groups: Mapping[str, Sequence[str]],
    fill: Mapping[str, float],
    *,
    dropout: bool = False,
    inputs: str = "inputs",
) -> xr.Dataset:
    """Training patches of a model with validity bands, with the dropout copies or without.

    With ``dropout`` and more than one group: :func:`modality_dropout` (the patches, then a
    copy per group with that group missing). Otherwise the patches once, ``inputs`` through
    :func:`fill_with_validity`. Works on patches in memory.

    Parameters
    ----------
    patches : xarray.Dataset
        Patches with an ``inputs`` variable ``(sample, band, y, x)``.
    groups, fill
        As for :func:`fill_with_validity` (e.g. :func:`sensor_groups` of the model's bands).
    dropout : bool
        Add the copies without each group.
    inputs : str
        Name of the input variable.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> x = xr.DataArray(np.ones((2, 2, 4, 4), np.float32), dims=("sample", "band", "y", "x"),
    ...                  coords={"band": ["HH", "NIR"]})
    >>> p = xr.Dataset({"inputs": x})
    >>> groups, fill = {"sar": ["HH"], "optical": ["NIR"]}, {"HH": 0.5, "NIR": 0.2}
    >>> training_patches(p, groups, fill).sizes["sample"]
    2
    >>> training_patches(p, groups, fill, dropout=True).sizes["sample"]
    6
    """
    if dropout and len(groups) > 1:
        return modality_dropout(patches, groups, fill, inputs=inputs)
    if inputs not in patches:
        raise InputError(f"patches have no {inputs!r} variable; expected (sample, band, y, x)")
    rest = patches.drop_vars([inputs, "band"])
    return rest.assign({inputs: fill_with_validity(patches[inputs], groups, fill)})
