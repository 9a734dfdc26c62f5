"""Plain JSON values from the configurations, fingerprints and sidecars xfusion writes.

One conversion for every writer: recipe fingerprints and the Zarr writer's store identity
(:mod:`xfusion.io.store`), recipe configs, and model sidecars (:mod:`xfusion.models.persist`,
which asks for the strict form so that an object it cannot read back is refused).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["jsonable"]


def jsonable(value: Any, *, strict: bool = False) -> Any:
    """Return ``value`` as plain JSON values, as ``json.loads(json.dumps(value))`` would.

    Tuples become lists, numpy scalars Python numbers, numpy arrays (nested) lists, mappings
    dicts (keys as ``json`` writes them: ``1`` → ``"1"``, ``True`` → ``"true"``); NaN and
    infinities stay floats. Any other object becomes its ``str``, or, with ``strict``, is
    refused.

    Parameters
    ----------
    value : object
        What to convert.
    strict : bool
        Raise instead of writing an unknown object as its ``str``.

    Returns
    -------
    object
        ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` or ``None``, nested.

    Raises
    ------
    TypeError
        With ``strict``: an object that is not a JSON value, numpy value or mapping; the
        message names its type and value. Also a mapping key that is not a ``str``, number,
        ``bool`` or ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> jsonable({"size": np.int64(3), "window": (1, 2), "scale": np.float32(0.5)})
    {'size': 3, 'window': [1, 2], 'scale': 0.5}
    >>> jsonable({"path": object}) == {"path": "<class 'object'>"}
    True
    """
    return json.loads(json.dumps(value, default=_strict if strict else _lenient))


def _strict(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not a JSON value")


def _lenient(value: Any) -> Any:
    try:
        return _strict(value)
    except TypeError:
        return str(value)
