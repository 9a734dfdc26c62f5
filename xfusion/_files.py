"""Small file-system helpers shared by the writers (datasets, recipes, CLI).

Output directories are *claimed*: :func:`claim_output_dir` writes a small marker file,
``.xfusion-output.json``, into every directory xfusion writes its outputs to, and refuses an
existing directory that is not empty and has no marker — so a mistyped ``--out`` never writes
into (or later overwrites) a folder of someone else's files.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from xfusion.errors import ConfigError, SourceError

__all__ = ["OUTPUT_MARKER", "claim_output_dir", "inside_dir", "writable_dir"]

#: Name of the marker file that makes a directory an xfusion output directory.
OUTPUT_MARKER = ".xfusion-output.json"


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


def claim_output_dir(path: str | os.PathLike[str], *, owner: str, message: str) -> Path:
    """Create or reuse ``path`` as an xfusion output directory and mark it as such.

    A directory that does not exist or is empty is created and marked; one that already holds
    the marker is reused (its outputs are overwritten or resumed). A directory that holds other
    files and no marker, or a path that is not a directory, raises
    :class:`~xfusion.errors.ConfigError` before anything is written there. Entries of the
    directory (and of its sub-folders) that are symbolic links resolving outside it also raise
    :class:`~xfusion.errors.ConfigError`, so no output can be written outside ``path``.

    Parameters
    ----------
    path : path-like
        The output directory.
    owner : str
        What writes there (a recipe name, ``"scene"``); recorded in the marker.
    message : str
        The :class:`~xfusion.errors.SourceError` text when the directory is not writable (see
        :func:`writable_dir`).

    Returns
    -------
    pathlib.Path
        The directory.

    Examples
    --------
    >>> import tempfile
    >>> folder = claim_output_dir(tempfile.mkdtemp(), owner="demo", message="{path}: {reason}")
    >>> sorted(p.name for p in folder.iterdir())
    ['.xfusion-output.json']
    """
    folder = Path(path)
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise ConfigError(
                f"output directory {str(folder)!r} exists and is not a folder; expected a new "
                "folder, an empty one or an earlier xfusion output"
            )
        marker = folder / OUTPUT_MARKER
        try:
            foreign = not marker.is_file() and next(folder.iterdir(), None) is not None
        except OSError as err:
            reason = err.strerror or str(err)
            raise SourceError(message.format(path=repr(str(folder)), reason=reason)) from err
        if foreign:
            raise ConfigError(
                f"output directory {str(folder)!r} holds files that are not an xfusion output "
                f"(it has no {OUTPUT_MARKER}); expected a new folder, an empty one or an earlier "
                "xfusion output: choose another output directory"
            )
    folder = writable_dir(folder, message)
    _check_links(folder)
    marker = folder / OUTPUT_MARKER
    content = json.dumps({"created_by": "xfusion", "owner": owner}, indent=2) + "\n"
    if not marker.is_file() or marker.read_text() != content:
        tmp = folder / f".{OUTPUT_MARKER}.partial-{uuid.uuid4().hex}"
        tmp.write_text(content)
        os.replace(tmp, marker)
    return folder


def inside_dir(folder: str | os.PathLike[str], name: str | os.PathLike[str]) -> Path:
    """Return ``folder / name``, checking that it stays inside ``folder``.

    ``name`` must be relative, without ``..`` components, and must not resolve (through
    symbolic links) outside ``folder``; otherwise :class:`~xfusion.errors.ConfigError`.

    Examples
    --------
    >>> inside_dir("out", "model/weights.msgpack").as_posix()
    'out/model/weights.msgpack'
    >>> inside_dir("out", "../elsewhere")
    Traceback (most recent call last):
    ...
    xfusion.errors.ConfigError: output name '../elsewhere' leaves the output directory 'out'; ...
    """
    root, relative = Path(folder), Path(name)
    if relative.is_absolute() or ".." in relative.parts or str(name).strip() in ("", "."):
        raise ConfigError(
            f"output name {str(name)!r} leaves the output directory {str(root)!r}; expected a "
            "relative name without '..', e.g. 'model'"
        )
    target = root / relative
    resolved, base = target.resolve(), root.resolve()
    if resolved != base and base not in resolved.parents:
        raise ConfigError(
            f"output {str(target)!r} resolves to {str(resolved)!r}, outside the output "
            f"directory {str(root)!r} (a symbolic link?); outputs must stay inside it"
        )
    return target


def _check_links(folder: Path) -> None:
    """Raise if an entry of ``folder`` or of its sub-folders is a link resolving outside it."""
    base = folder.resolve()
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            entries = list(current.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                resolved = entry.resolve()
                if resolved != base and base not in resolved.parents:
                    raise ConfigError(
                        f"{str(entry)!r} is a symbolic link to {str(resolved)!r}, outside the "
                        f"output directory {str(folder)!r}; outputs must stay inside it "
                        "(remove the link or choose another output directory)"
                    )
            elif entry.is_dir() and not entry.name.endswith((".zarr", ".partial")):
                pending.append(entry)
