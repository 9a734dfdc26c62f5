"""The exception hierarchy of xfusion.

Every mistake a user can make is reported as a subclass of :class:`XFusionError` whose message
names what is wrong and what was expected, e.g. ``band 'QA60' not in cube; bands are ['B02', ...]``.
The classes also derive from the closest built-in exception (``KeyError``, ``ValueError``,
``FileNotFoundError`` ...) so code that already catches those keeps working.
"""

from __future__ import annotations


class XFusionError(Exception):
    """Base class of every error raised by xfusion."""

    def __str__(self) -> str:
        # KeyError quotes its message; keep messages readable for the subclasses deriving from it.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputError(XFusionError, ValueError):
    """An argument has the wrong type, shape, value or dimension."""


class GridError(XFusionError, ValueError):
    """A grid is invalid, cannot be transformed, or does not overlap the data."""


class BandError(XFusionError, KeyError):
    """A band/asset is missing, duplicated, of the wrong dtype, or in the wrong order."""


class SourceError(XFusionError, OSError):
    """A data source cannot be opened or read (missing file, unreadable href, service error)."""


class MissingFileError(SourceError, FileNotFoundError):
    """A path or href names a file that does not exist."""


class RequestTooLargeError(SourceError):
    """A request to a service is larger than its limit even at the smallest chunk size."""


class EmptySelectionError(InputError):
    """A selection (date range, time window, region, filters) matches no data."""


class ModelError(XFusionError, RuntimeError):
    """A model cannot be fitted, applied, saved or loaded (NaN loss, corrupt file, bad version)."""


class ConfigError(InputError):
    """A recipe configuration has an unknown key or an invalid value."""


class ScaleError(InputError):
    """A band cannot be rescaled: already scaled, scaling unknown, or flags/class labels."""


class XFusionWarning(UserWarning):
    """Warnings issued by xfusion (turned into errors in the test-suite)."""


class MissingAssetWarning(XFusionWarning):
    """A STAC item lacks some of the selected assets: their bands read as NaN for that item."""


__all__ = [
    "BandError",
    "ConfigError",
    "EmptySelectionError",
    "GridError",
    "InputError",
    "MissingAssetWarning",
    "MissingFileError",
    "ModelError",
    "RequestTooLargeError",
    "ScaleError",
    "SourceError",
    "XFusionError",
    "XFusionWarning",
]
