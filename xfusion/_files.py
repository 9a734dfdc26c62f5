"""Small file-system helpers shared by the writers (datasets, recipes, CLI)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from xfusion.errors import SourceError

__all__ = ["writable_dir"]


def writable_dir(path: str | os.PathLike[str], message: str) -> Path:
    """Create ``path`` and check that files can be written in it.

    ``message`` is the :class:`~xfusion.errors.SourceError` text, formatted with ``path`` (the
    folder, quoted) and ``reason`` (what the operating system said).

    Examples
    --------
    >>> import tempfile
    >>> writable_dir(tempfile.mkdtemp(), "cannot write to {path}: {reason}").is_dir()
    True
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".xfusion-write-test-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        raise SourceError(message.format(path=repr(str(folder)), reason=reason)) from err
    return folder
