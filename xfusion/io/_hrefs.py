"""Helpers shared by the readers: local paths versus remote hrefs, and existence checks.

Local files are checked when a source is opened (cheap, and the user learns about a typo at once);
remote hrefs (``https://``, ``s3://`` ...) are only touched when the data are computed.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from xfusion.errors import MissingFileError
from xfusion.io._retry import redact

__all__ = ["check_local_exists", "is_remote", "local_href", "local_path"]

# GDAL virtual file systems and URL schemes that name data elsewhere than the local disk.
_REMOTE_PREFIXES = ("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift")


def is_remote(href: str | os.PathLike[str]) -> bool:
    """Whether ``href`` names a remote object (URL scheme other than ``file``, or a GDAL /vsi path).

    Examples
    --------
    >>> is_remote("https://example.com/a.tif"), is_remote("/data/a.tif")
    (True, False)
    >>> is_remote("file:///data/a.tif")
    False
    """
    text = os.fspath(href)
    if text.startswith(_REMOTE_PREFIXES):
        return True
    scheme = urlparse(text).scheme
    # A one-letter "scheme" is a Windows drive letter, not a URL.
    return len(scheme) > 1 and scheme != "file"


def local_path(href: str | os.PathLike[str]) -> Path | None:
    """Return the local filesystem path that ``href`` names, or ``None`` for a remote href.

    A ``file:`` URL is decoded: its percent-escapes (``%20``, ``%C3%A9`` for UTF-8 ``é``) become
    the characters they stand for, as :meth:`pathlib.Path.as_uri` writes them. A plain path is
    taken literally.

    Examples
    --------
    >>> str(local_path("file:///data/scene%201.tif"))
    '/data/scene 1.tif'
    >>> str(local_path("file://localhost/data/caf%C3%A9.tif"))
    '/data/café.tif'
    >>> local_path("s3://bucket/a.tif") is None
    True
    """
    if is_remote(href):
        return None
    text = os.fspath(href)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return Path(text)


def local_href(href: str) -> str:
    """Return ``href`` as readers (GDAL, rasterio) open it: a decoded path for a ``file:`` URL.

    GDAL does not understand ``file://`` URLs, and rasterio passes their path on undecoded, so
    ``file:///data/scene%201.tif`` would be looked up as a file literally named ``scene%201.tif``.
    Remote hrefs, plain paths and ``file:`` URLs with a query or fragment (a signed URL
    pointing at a local copy names no plain file) are returned unchanged.

    Examples
    --------
    >>> local_href("file:///data/scene%201.tif"), local_href("https://x.org/a%20b.tif")
    ('/data/scene 1.tif', 'https://x.org/a%20b.tif')
    """
    parsed = urlparse(href)
    if is_remote(href) or parsed.scheme != "file" or parsed.query or parsed.fragment:
        return href
    return os.fspath(local_path(href))


def check_local_exists(href: str | os.PathLike[str], what: str) -> None:
    """Raise :class:`MissingFileError` when a local ``href`` does not exist (remote hrefs pass).

    ``what`` describes the href in the message, e.g. ``"asset 'B04' of item 'S2A_...'"``; tokens
    in the href (signed URLs, API keys) are redacted.
    """
    path = local_path(href)
    if path is not None and not path.is_file():
        raise MissingFileError(redact(f"{what}: file {os.fspath(href)!r} does not exist"))
