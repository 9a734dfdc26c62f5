"""Damaged inputs: STAC assets and raster files missing, corrupt or truncated; tokens in hrefs."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pandas as pd
import pystac
import pytest
import rasterio
import xarray as xr

import xfusion as xf
from xfusion.datasets import write_stac
from xfusion.errors import InputError, MissingFileError, SourceError, XFusionWarning
from xfusion.grids import assign_grid
from xfusion.io._retry import has_secret, redact, sanitized

GRID = xf.grid((500000, 4000000, 500320, 4000320), "EPSG:32633", 10)  # 32 x 32 px
TIMES = pd.date_range("2021-01-01", periods=3)
BANDS = ["B1", "B2"]


@pytest.fixture
def catalog(tmp_path):
    """Three items of two float32 bands as COGs; their data, hrefs and item ids."""
    data = np.random.default_rng(7).random((3, 2, 32, 32)).astype("float32")
    cube = xr.DataArray(
        data, dims=("time", "band", "y", "x"), coords={"time": TIMES, "band": BANDS}
    )
    path = write_stac({"s": assign_grid(cube, GRID)}, tmp_path / "cat")
    items = sorted(pystac.read_file(str(path)).get_items(recursive=True), key=lambda i: i.datetime)
    hrefs = {(i.id, k): a.get_absolute_href() for i in items for k, a in i.assets.items()}
    return {"path": path, "data": data, "hrefs": hrefs, "ids": [i.id for i in items]}


def damage(catalog) -> dict[tuple[int, int], str]:
    """Delete one asset, overwrite one with garbage and truncate one; (time, band) -> href."""
    ids, hrefs = catalog["ids"], catalog["hrefs"]
    missing, garbage, truncated = hrefs[ids[0], "B1"], hrefs[ids[0], "B2"], hrefs[ids[1], "B1"]
    os.remove(missing)
    size = os.path.getsize(garbage)
    with open(garbage, "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 256, size, dtype="uint8").tobytes())
    with open(truncated, "rb") as f:
        head = f.read(300)
    with open(truncated, "wb") as f:
        f.write(head)
    return {(0, 0): missing, (0, 1): garbage, (1, 0): truncated}


def item(catalog, t: int) -> pystac.Item:
    found = pystac.read_file(str(catalog["path"])).get_child("s").get_item(catalog["ids"][t])
    return found.full_copy()


def label(catalog, t: int, b: int) -> str:
    return f"asset {BANDS[b]!r} of item {catalog['ids'][t]!r}"


def xfusion_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, XFusionWarning)]


def test_on_error_nan_reads_unreadable_assets_as_nan_and_warns_once_per_asset(catalog):
    damaged = damage(catalog)
    # 8-px chunks: every asset spans 16 blocks, each of which fails for a damaged asset.
    cube = xf.open_stac(catalog["path"], chunks=8, on_error="nan")
    with pytest.warns(XFusionWarning) as record:
        values = cube.values
    messages = xfusion_warnings(record)
    assert len(messages) == len(damaged)
    for (t, b), href in damaged.items():
        (message,) = [m for m in messages if label(catalog, t, b) in m]
        assert repr(href) in message and "on_error='nan'" in message
    for t in range(3):
        for b in range(2):
            if (t, b) in damaged:
                assert np.isnan(values[t, b]).all()
            else:  # the readable assets are exactly what was written
                np.testing.assert_array_equal(values[t, b], catalog["data"][t, b])

    # Every computation reports the unreadable assets it reads, once each: a band is one chunk of
    # assets, so computing band B2 reads (and reports) only the B2 assets.
    with pytest.warns(XFusionWarning) as record:
        b2 = cube.sel(band="B2").values
    assert xfusion_warnings(record) == [m for m in messages if label(catalog, 0, 1) in m]
    np.testing.assert_array_equal(b2, values[:, 1])


def test_on_error_raise_names_the_asset(catalog):
    ids, hrefs = catalog["ids"], catalog["hrefs"]
    damaged = damage(catalog)
    # A local file that is missing is reported when opening.
    with pytest.raises(MissingFileError, match=re.escape(label(catalog, 0, 0))):
        xf.open_stac(catalog["path"])
    # Corrupt and truncated files are found when read.
    for (t, b), href in list(damaged.items())[1:]:
        cube = xf.open_stac(item(catalog, t), assets=[BANDS[b]], chunks=8)
        with pytest.raises(SourceError, match=re.escape(label(catalog, t, b))) as info:
            cube.compute()
        assert repr(href) in str(info.value)
    # A file deleted after opening is a MissingFileError when read.
    cube = xf.open_stac(item(catalog, 2), assets=["B2"], chunks=8)
    os.remove(hrefs[ids[2], "B2"])
    with pytest.raises(MissingFileError, match=re.escape(label(catalog, 2, 1))):
        cube.compute()


def test_on_error_is_validated(catalog):
    with pytest.raises(InputError, match=r"on_error must be one of \['raise', 'nan'\]; got 'skip'"):
        xf.open_stac(catalog["path"], on_error="skip")


def test_tokens_in_hrefs_are_redacted(catalog, tmp_path):
    secret = "sv2021Zm9vYmFyc2VjcmV0"
    signed = item(catalog, 0)
    signed.make_asset_hrefs_absolute()
    signed.assets["B1"].href = f"file://{tmp_path}/gone.tif?se=2030-01-01&sig={secret}"
    with pytest.raises(MissingFileError, match=r"gone\.tif\?se=2030-01-01&sig=<redacted>") as info:
        xf.open_stac(signed, assets=["B1"])
    assert secret not in str(info.value) and secret not in repr(info.value)
    cube = xf.open_stac(signed, assets=["B1", "B2"], on_error="nan")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        values = cube.values
    (message,) = xfusion_warnings(record)
    assert "sig=<redacted>" in message and label(catalog, 0, 0) in message
    assert not any(secret in str(w.message) for w in record)
    assert np.isnan(values[0, 0]).all()
    np.testing.assert_array_equal(values[0, 1], catalog["data"][0, 1])


def write_raster(path, data) -> None:
    """A tiled, compressed single-band GeoTIFF on ``GRID``."""
    profile = {"driver": "GTiff", "width": 32, "height": 32, "count": 1, "dtype": "float32"}
    profile.update(crs="EPSG:32633", transform=GRID.affine, tiled=True, blockxsize=16)
    with rasterio.open(path, "w", **profile, blockysize=16, compress="deflate") as dst:
        dst.write(data[np.newaxis])


def test_open_raster_missing_garbage_and_truncated_files_name_the_path(tmp_path):
    data = np.random.default_rng(3).random((32, 32)).astype("float32")
    good, cut = tmp_path / "good.tif", tmp_path / "cut.tif"
    write_raster(good, data)
    write_raster(cut, data)
    with pytest.raises(MissingFileError, match=r"raster: file '.*gone\.tif' does not exist"):
        xf.open_raster([good, tmp_path / "gone.tif"])
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, "uint8").tobytes())
    with pytest.raises(SourceError, match=r"cannot open raster '.*garbage\.tif'"):
        xf.open_raster([good, garbage])
    # Header intact, tiles cut off: the file opens, and the read names it.
    size = os.path.getsize(cut)
    with open(cut, "r+b") as f:
        f.truncate(size * 2 // 3)
    cube = xf.open_raster([good, cut], chunks=16)
    with pytest.raises(SourceError, match=rf"cannot read raster {re.escape(repr(str(cut)))}"):
        cube.compute()
    # The readable file's blocks still read as written.
    np.testing.assert_array_equal(cube.isel(band=0).values, data)


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("ya29.a0AfH6SMBx-1_2 expired", "a0AfH6SMBx-1_2", "expired"),
        ("Authorization: Bearer abc.DEF-123", "abc.DEF-123", "Authorization: <redacted>"),
        ("headers {'authorization': 'Basic dXNlcjpwdw=='}", "dXNlcjpwdw==", "headers"),
        ("got bearer tok_987654321 back", "tok_987654321", "bearer <redacted>"),
        ("GET /v1/x?alt=json&key=AIzaSyA-1234567890abcdefghijk 403", "1234567890abc", "403"),
        ("oauth answer access_token=ab12cd34&expires_in=3599", "ab12cd34", "expires_in=3599"),
        ('{"refresh_token": "1//0gXYZ-secret_token_value_1234"}', "secret_token", "refresh_token"),
        ("'client_secret': 'GOCSPX-abcdef'", "GOCSPX-abcdef", "client_secret"),
        (
            '{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQ'
            '\\n-----END PRIVATE KEY-----\\n"}',
            "MIIEvQ",
            "private_key",
        ),
        ("key file: -----BEGIN RSA PRIVATE KEY-----\nMIIEow", "MIIEow", "key file"),
        ("https://b.blob.core.windows.net/c/x.tif?sv=2021&sig=AbC%2Bd%3D 403", "AbC%2Bd", "403"),
        (
            "s3 https://b.s3.amazonaws.com/x.tif?X-Amz-Signature=f00ba4&X-Amz-Date=2024",
            "f00ba4",
            "X-Amz-Date=2024",
        ),
        ("id token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl", "c2lnbmF0dXJl", "id token"),
        ("ftp://user:hunter2@host/x.tif unreachable", "hunter2", "host/x.tif unreachable"),
        ("password = hunter2;", "hunter2", "password"),
    ],
)
def test_redact_removes_secrets_and_keeps_the_rest(text, secret, kept):
    out = redact(text)
    assert secret not in out and kept in out and "<redacted" in out
    assert not has_secret(out)  # idempotent


@pytest.mark.parametrize(
    "text",
    [
        "band 'QA60' not in cube; bands are ['B02', 'B03']",
        "asset 'B04' of item 'S2A_32TQM_20210701': file '/data/s2/B04.tif' does not exist",
        "Service Unavailable (HTTP 503); rows 0:512, cols 512:1024",
        "https://example.com/catalog/items/a.json?limit=10&page=2",
        "Dictionary.get: Dictionary does not contain key: 'CLOUD_COVER'.",
    ],
)
def test_redact_leaves_ordinary_messages_alone(text):
    assert redact(text) == text and not has_secret(text)


def test_sanitized_copies_only_chains_holding_a_secret():
    plain = RuntimeError("Internal Server Error (HTTP 500)")
    assert sanitized(plain) is plain
    try:
        try:
            raise ValueError("requesting https://x.org/a?key=AIzaSyA-1234567890abcdefghijk")
        except ValueError as inner:
            raise RuntimeError("Forbidden (HTTP 403)") from inner
    except RuntimeError as err:
        outer = err
    copy = sanitized(outer)
    assert copy is not outer and str(copy) == "builtins.RuntimeError: Forbidden (HTTP 403)"
    assert str(copy.__cause__) == "builtins.ValueError: requesting https://x.org/a?key=<redacted>"
    assert copy.__cause__.__cause__ is None
