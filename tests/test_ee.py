"""Earth Engine reader: offline against the fake service, plus one test against the real one."""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
import warnings

import ee
import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings

import xfusion as xf
from xfusion.errors import (
    BandError,
    EmptySelectionError,
    GridError,
    InputError,
    RequestTooLargeError,
    SourceError,
)
from xfusion.grids import geobox_of, grid_coords
from xfusion.io._retry import Backoff, call_with_retry, is_transient
from xfusion.io.ee import REQUEST_BYTE_LIMIT, _plan_chunks
from xfusion.testing import raise_if_dask_computes
from xfusion.testing.ee import FakeImage, fake_earth_engine

CRS = "EPSG:32633"
# Native asset grid: 100 x 120 px; the request grid is a 60 x 80 px window 20 px in from the top
# left corner, so reading it exercises offsets, not just whole arrays.
NATIVE = xf.grid((499800, 3999800, 501000, 4000800), CRS, 10)
GRID = xf.grid((500000, 4000000, 500800, 4000600), CRS, 10)
WINDOW = (slice(20, 80), slice(20, 100))
FAR = xf.grid((700000, 3999800, 701200, 4000800), CRS, 10)  # does not touch GRID
TIMES = pd.to_datetime(["2020-03-01", "2020-05-10", "2020-07-20", "2020-09-30", "2021-02-01"])
CLOUDY = [5.0, 35.0, 12.0, 20.0, 1.0]
NO_RETRY_WAIT = Backoff(initial_delay=0.0, jitter=0.0)


def _native_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = tuple(NATIVE.shape)
    qa = np.where(rng.random(shape) < 0.2, 1 << 10, 0).astype("uint16")
    return {
        "B02": rng.integers(0, 10_000, shape).astype("uint16"),
        "B03": rng.integers(0, 10_000, shape).astype("uint16"),
        "QA60": qa,
    }


def _scene() -> dict:
    arrays = [_native_arrays(i) for i in range(len(TIMES))]
    masks = []
    images = []
    for i, (t, arr) in enumerate(zip(TIMES, arrays, strict=True)):
        valid = np.ones(tuple(NATIVE.shape), bool)
        valid[30 + i, :] = False  # a masked row per image, inside the window
        masks.append(valid)
        props = {"CLOUDY_PIXEL_PERCENTAGE": CLOUDY[i], "SPACECRAFT": "S2A" if i % 2 else "S2B"}
        images.append(
            FakeImage(
                arr,
                grid=NATIVE,
                time=t,
                properties=props,
                masks=dict.fromkeys(arr, valid),
                id=f"TEST/S2/{i}",
            )
        )
    far = FakeImage(_native_arrays(99), grid=FAR, time="2020-06-01", id="TEST/S2/far")
    return {"images": [*images, far], "arrays": arrays, "masks": masks}


@pytest.fixture
def scene():
    data = _scene()
    dem = np.linspace(0, 500, NATIVE.shape[0] * NATIVE.shape[1]).reshape(tuple(NATIVE.shape))
    with fake_earth_engine(
        {"TEST/S2": data["images"]}, {"TEST/DEM": FakeImage({"elevation": dem}, grid=NATIVE)}
    ) as fake:
        data["fake"] = fake
        data["dem"] = dem
        yield data


def _truth(scene: dict, indices, bands) -> np.ndarray:
    """Expected cube from the native arrays by plain numpy slicing, masked pixels as NaN."""
    out = []
    for i in indices:
        valid = scene["masks"][i][WINDOW]
        out.append(
            [
                np.where(valid, scene["arrays"][i][b][WINDOW].astype("float32"), np.nan)
                for b in bands
            ]
        )
    return np.array(out, dtype="float32")


def _invocations(encoded: dict) -> list[tuple[str, dict]]:
    """Every distinct function call in a serialised expression, references resolved."""
    found: list[tuple[str, dict]] = []

    def resolve(n):
        if isinstance(n, dict):
            if "valueReference" in n:
                return resolve(encoded["values"][n["valueReference"]])
            if "constantValue" in n:
                return n["constantValue"]
            if "arrayValue" in n:
                return [resolve(v) for v in n["arrayValue"].get("values", [])]
            if "functionInvocationValue" in n:
                inv = n["functionInvocationValue"]
                args = {k: resolve(v) for k, v in inv.get("arguments", {}).items()}
                if (inv["functionName"], args) not in found:
                    found.append((inv["functionName"], args))
                return {"call": inv["functionName"], **args}
            if "functionDefinitionValue" in n:
                return resolve(encoded["values"][n["functionDefinitionValue"]["body"]])
        return n

    for value in encoded["values"].values():
        resolve(value)
    return found


def _millis(t) -> int:
    return int(pd.Timestamp(t).value // 1_000_000)


# --------------------------------------------------------------------------------------------
# Pixels, grid, laziness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [None, {"time": 1, "y": 16, "x": 24}, {"time": -1, "y": -1}])
def test_pixels_equal_truth(scene, chunks):
    cube = xf.open_ee(
        "TEST/S2",
        grid=GRID,
        start="2020-01-01",
        end="2021-01-01",
        bands=["B03", "B02"],
        chunks=chunks,
        retry=NO_RETRY_WAIT,
    )
    assert cube.dims == ("time", "band", "y", "x")
    assert cube.dtype == np.float32
    assert list(cube.band.values) == ["B03", "B02"]
    # Earth Engine's stored numbers: nothing rescaled, and the cube says so
    assert xf.bands.band_scaling(cube) == {"B03": (1.0, 0.0), "B02": (1.0, 0.0)}
    np.testing.assert_array_equal(cube.time.values, TIMES[:4].values)
    result = cube.compute()
    assert isinstance(result.data, np.ndarray)
    np.testing.assert_array_equal(result.values, _truth(scene, range(4), ["B03", "B02"]))
    if chunks and chunks.get("y") == 16:
        assert cube.chunks[2][0] == 16 and cube.chunks[3][0] == 24 and cube.chunks[0] == (1,) * 4


def test_grid_alignment(scene):
    cube = xf.open_ee("TEST/S2", grid=GRID, bands="B02")
    expected = grid_coords(GRID)
    np.testing.assert_array_equal(cube.x.values, expected["x"].values)
    np.testing.assert_array_equal(cube.y.values, expected["y"].values)
    assert geobox_of(cube) == GRID
    assert cube.rio.crs.to_epsg() == 32633
    assert tuple(cube.rio.transform())[:6] == tuple(GRID.affine)[:6]
    # Every pixel request used the grid's exact CRS and a transform on the grid's lattice.
    cube.compute()
    for req in scene["fake"].pixel_requests:
        g = req["grid"]
        assert g["crsCode"] == CRS
        t = g["affineTransform"]
        assert (t["scaleX"], t["scaleY"]) == (10.0, -10.0)
        assert (t["translateX"] - 500000) % 10 == 0 and (4000600 - t["translateY"]) % 10 == 0


def test_open_computes_nothing(scene):
    with raise_if_dask_computes():
        cube = xf.open_ee(
            "TEST/S2", grid=GRID, filters={"CLOUDY_PIXEL_PERCENTAGE": ("lt", 30)}, bands=["B02"]
        )
        summed = cube.sum("time")
    assert scene["fake"].pixel_requests == []
    assert len(scene["fake"].value_requests) >= 1  # metadata only
    assert cube.chunks is not None and summed.chunks is not None


# --------------------------------------------------------------------------------------------
# The server-side expression: filters, bounds, band selection
# --------------------------------------------------------------------------------------------


def test_expression_holds_filters_and_bands(scene):
    xf.open_ee(
        "TEST/S2",
        grid=GRID,
        start="2020-02-01",
        end="2020-10-01",
        bands=["B02", "QA60"],
        filters={"CLOUDY_PIXEL_PERCENTAGE": ("lt", 40), "SPACECRAFT": ("in", ["S2A"])},
    )
    calls = _invocations(scene["fake"].value_requests[0])
    names = [name for name, _ in calls]
    assert ("ImageCollection.load", {"id": "TEST/S2"}) in calls
    (date_range,) = [args for name, args in calls if name == "DateRange"]
    assert date_range == {"start": _millis("2020-02-01"), "end": _millis("2020-10-01")}
    assert ("Filter.lessThan", {"leftField": "CLOUDY_PIXEL_PERCENTAGE", "rightValue": 40}) in calls
    assert ("Filter.listContains", {"leftValue": ["S2A"], "rightField": "SPACECRAFT"}) in calls
    selects = [args for name, args in calls if name == "Image.select"]
    assert any(args["bandSelectors"] == ["B02", "QA60"] for args in selects)
    assert "Filter.intersects" in names
    (polygon,) = [args for name, args in calls if name == "GeometryConstructors.Polygon"]
    ring = np.array(polygon["coordinates"][0])
    lonlat = GRID.extent.to_crs("EPSG:4326").boundingbox
    np.testing.assert_allclose(ring[:, 0].min(), lonlat.left, atol=1e-9)
    np.testing.assert_allclose(ring[:, 1].max(), lonlat.top, atol=1e-9)
    assert polygon["geodesic"] is False


def _expected_times(op, value):
    props = np.array(CLOUDY)
    keep = {
        "lt": props < value,
        "lte": props <= value,
        "gt": props > value,
        "gte": props >= value,
        "eq": props == value,
        "neq": props != value,
    }[op]
    return TIMES[keep]


@pytest.mark.parametrize("op", ["lt", "lte", "gt", "gte", "eq", "neq"])
def test_property_filters_select_images(scene, op):
    cube = xf.open_ee(
        "TEST/S2", grid=GRID, bands="B02", filters={"CLOUDY_PIXEL_PERCENTAGE": (op, 20.0)}
    )
    # The far-away image is dropped by the bounds filter whatever its properties.
    np.testing.assert_array_equal(cube.time.values, _expected_times(op, 20.0).values)


def test_in_filter_and_one_sided_dates(scene):
    cube = xf.open_ee(
        "TEST/S2",
        grid=GRID,
        bands="B02",
        start="2020-06-01",
        filters={"SPACECRAFT": ("in", ["S2A"])},
    )
    expected = [t for i, t in enumerate(TIMES) if i % 2 and t >= pd.Timestamp("2020-06-01")]
    np.testing.assert_array_equal(cube.time.values, pd.DatetimeIndex(expected).values)
    cube = xf.open_ee("TEST/S2", grid=GRID, bands="B02", end="2020-05-10")
    np.testing.assert_array_equal(cube.time.values, TIMES[:1].values)


# --------------------------------------------------------------------------------------------
# Request sizing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float64"])
def test_every_request_under_the_limit(dtype):
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 200, tuple(NATIVE.shape)).astype(dtype) for _ in range(3)]
    images = [
        FakeImage({"v": a}, grid=NATIVE, time=f"2020-0{i + 1}-01") for i, a in enumerate(arrays)
    ]
    limit = 6_000
    with fake_earth_engine({"C": images}) as fake:
        cube = xf.open_ee("C", grid=GRID, chunks={"time": -1}, request_byte_limit=limit)
        values = cube.values
        requests = fake.pixel_requests
    np.testing.assert_array_equal(values[:, 0], np.stack([a[WINDOW] for a in arrays]))
    assert requests and all(r["nbytes"] <= limit for r in requests)
    # The answer's real dtype after xee's unmask with an int32 sentinel, as Earth Engine sizes it.
    itemsize = np.result_type(dtype, np.uint32).itemsize
    assert {r["dtype"].itemsize for r in requests} == {itemsize}
    # Requests are as large as allowed, not needlessly tiny: fewer requests for smaller types.
    per_pixel = itemsize + 1
    assert max(r["nbytes"] for r in requests) > limit / 4
    pixels = 3 * GRID.shape[0] * GRID.shape[1]
    assert len(requests) >= pixels * per_pixel / limit


def test_default_plan_keeps_48mb_on_a_large_grid():
    dask_chunks, io = _plan_chunks(
        400, 30_000, 30_000, 8, chunks={"y": 4096, "x": 4096, "time": -1}, limit=REQUEST_BYTE_LIMIT
    )
    assert dask_chunks == {"time": 400, "y": 4096, "x": 4096}
    assert io["index"] * io["height"] * io["width"] * 9 <= 48 * 2**20
    assert io["height"] >= 256 and io["width"] >= 256


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 500),
    h=st.integers(1, 5000),
    w=st.integers(1, 5000),
    itemsize=st.sampled_from([1, 2, 4, 8]),
    limit=st.integers(200, 48 * 2**20),
)
def test_plan_chunks_respects_limit(n, h, w, itemsize, limit):
    try:
        dask_chunks, io = _plan_chunks(n, h, w, itemsize, chunks={}, limit=limit)
    except RequestTooLargeError:
        assert min(16, h) * min(16, w) * (itemsize + 1) > limit
        return
    assert io["index"] * io["height"] * io["width"] * (itemsize + 1) <= limit
    assert io["index"] <= dask_chunks["time"] <= n
    assert io["height"] <= dask_chunks["y"] <= h and io["width"] <= dask_chunks["x"] <= w


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


def test_retries_then_succeeds(scene):
    delays: list[float] = []
    backoff = Backoff(max_retries=4, initial_delay=0.5, factor=2, jitter=0, sleep=delays.append)
    cube = xf.open_ee(
        "TEST/S2", grid=GRID, bands="B02", chunks={"time": -1, "y": -1, "x": -1}, retry=backoff
    )
    scene["fake"].fail_next(3, status=429)
    values = cube.values
    assert scene["fake"].failures_served == 3
    assert delays == [0.5, 1.0, 2.0]
    np.testing.assert_array_equal(values, _truth(scene, range(5), ["B02"]))


ALL_AT_ONCE = {"time": -1, "y": -1, "x": -1}  # one pixel request per band
PIXEL_REQUEST = (
    r"computePixels for 'TEST/S2', band 'B02', images 0-4 \('TEST/S2/0' to 'TEST/S2/4'\) of 5, "
    r"rows 0:60, cols 0:80"
)
METADATA_REQUEST = r"computeValue for the metadata of 'TEST/S2', bands \['B02'\]"


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("call", ["computePixels", "computeValue"])
def test_first_k_failures_of_every_request_are_retried(scene, status, call):
    k, retries = 2, 3
    delays: list[float] = []
    backoff = Backoff(max_retries=retries, initial_delay=0.25, jitter=0, sleep=delays.append)
    fake = scene["fake"]
    fake.fail_each(k, status=status, call=call)
    # 2 bands x 3 time chunks x 2 x 2 tiles: 24 distinct pixel requests, fetched concurrently.
    cube = xf.open_ee(
        "TEST/S2",
        grid=GRID,
        bands=["B02", "B03"],
        chunks={"time": 2, "y": 32, "x": 48},
        retry=backoff,
    )
    values = cube.values
    np.testing.assert_array_equal(values, _truth(scene, range(5), ["B02", "B03"]))
    attempts = fake.attempts(call)
    assert len(attempts) == (24 if call == "computePixels" else 1)
    assert set(attempts.values()) == {k + 1}
    assert fake.failures_served == k * len(attempts)
    assert sorted(delays) == sorted([0.25, 0.5] * len(attempts))


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("call", ["computePixels", "computeValue"])
def test_persistent_failure_names_the_request_after_the_configured_retries(scene, status, call):
    delays: list[float] = []
    backoff = Backoff(max_retries=2, initial_delay=1, max_delay=1.5, jitter=0, sleep=delays.append)
    fake = scene["fake"]
    fake.fail_each(10**6, status=status, call=call)
    reason = {429: "Too Many Requests", 503: "Service Unavailable"}[status]
    request = PIXEL_REQUEST if call == "computePixels" else METADATA_REQUEST
    with pytest.raises(
        SourceError, match=rf"{request}.* failed after 3 attempts.*{reason}"
    ) as info:
        xf.open_ee("TEST/S2", grid=GRID, bands="B02", chunks=ALL_AT_ONCE, retry=backoff).compute()
    assert f"HTTP {status}" in str(info.value)
    assert list(fake.attempts(call).values()) == [3]
    assert delays == [1.0, 1.5]


class FakeClock:
    """A clock that only moves when slept on, so time limits are tested exactly."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_retry_timeout_stops_retrying_before_it_passes(scene):
    clock = FakeClock()
    backoff = Backoff(
        max_retries=100, initial_delay=1, factor=1, jitter=0, timeout=3.5,
        sleep=clock.sleep, clock=clock.time,
    )  # fmt: skip
    scene["fake"].fail_each(10**6, status=503)
    cube = xf.open_ee("TEST/S2", grid=GRID, bands="B02", chunks=ALL_AT_ONCE, retry=backoff)
    # Attempts at t = 0, 1, 2, 3 s; a fifth at 4 s would start after the 3.5 s timeout.
    with pytest.raises(
        SourceError, match=rf"{PIXEL_REQUEST} failed after 4 attempts in 3 s.*3.5 s"
    ):
        cube.compute()
    assert list(scene["fake"].attempts().values()) == [4]
    assert clock.now == 3.0


@pytest.mark.parametrize(
    "backoff",
    [
        Backoff(max_retries=3, initial_delay=0.05, max_delay=0.08, jitter=0),  # sleeps 0.21 s
        Backoff(max_retries=10**6, initial_delay=0.01, max_delay=0.02, jitter=0, timeout=0.3),
    ],
    ids=["retries", "timeout"],
)
def test_persistent_failure_is_raised_within_the_configured_time(scene, backoff):
    scene["fake"].fail_each(10**6, status=429)
    cube = xf.open_ee("TEST/S2", grid=GRID, bands="B02", chunks=ALL_AT_ONCE, retry=backoff)
    if backoff.timeout is None:
        bound = sum(backoff.delays())
    else:
        bound = backoff.timeout
    start = time.monotonic()
    with pytest.raises(SourceError, match=PIXEL_REQUEST):
        cube.compute()
    elapsed = time.monotonic() - start
    (attempts,) = scene["fake"].attempts().values()
    if backoff.timeout is None:
        assert attempts == 4 and elapsed >= bound
    else:
        assert 2 <= attempts < 10**6
    # The bound holds the waits; allow for the attempts themselves and Dask on a busy host.
    assert elapsed < bound + 3.0


SECRETS = (
    "ya29.a0AfH6SMB-fake-access-token",
    "AIzaSyD-fake-api-key-0123456789abcdef",
    "MIIEvQIBADANBgkqhkiG9w0fakekey",
    "fake-refresh-secret-42",
)
LEAKY_MESSAGE = (
    "<HttpError when requesting https://earthengine.googleapis.com/v1/projects/p/"
    f"image:computePixels?alt=json&key={SECRETS[1]} returned 'denied'> "
    f"headers={{'Authorization': 'Bearer {SECRETS[0]}'}} access_token={SECRETS[0]} "
    f'key file {{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\n'
    f'{SECRETS[2]}\\n-----END PRIVATE KEY-----\\n", "refresh_token": "{SECRETS[3]}"}}'
)


def _chain(err):
    seen = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


@pytest.mark.parametrize(
    ("status", "reason"), [(503, "Service Unavailable"), (401, "Unauthorized")]
)
@pytest.mark.parametrize("call", ["computePixels", "computeValue"])
def test_credentials_never_reach_messages_or_logs(scene, caplog, status, reason, call):
    caplog.set_level(logging.DEBUG)
    scene["fake"].fail_each(10**6, status=status, call=call, message=LEAKY_MESSAGE)
    backoff = Backoff(max_retries=2, initial_delay=0, jitter=0)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SourceError) as info:
        warnings.simplefilter("always")
        xf.open_ee("TEST/S2", grid=GRID, bands="B02", chunks=ALL_AT_ONCE, retry=backoff).compute()
    err = info.value
    texts = [str(err), repr(err), "".join(traceback.format_exception(err))]
    texts += [f"{e!s} {e!r} {e.args!r}" for e in _chain(err)]
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    texts += [str(w.message) for w in caught]
    for secret in SECRETS:
        assert not any(secret in text for text in texts), secret
    # What helps the user is kept: the status, the request, that credentials were involved.
    assert f"{reason} (HTTP {status})" in str(err) and "'TEST/S2'" in str(err)
    assert "key=<redacted>" in str(err) and "Authorization" in str(err)
    if status == 503:  # retried: each retry is logged, redacted
        retries = [r for r in caplog.records if r.name == "xfusion.io"]
        assert len(retries) == 2 and all("HTTP 503" in r.getMessage() for r in retries)
    assert len(_chain(err)) >= 2  # the upstream error stays in the chain, redacted


def test_client_errors_are_not_retried(scene):
    cube = xf.open_ee("TEST/S2", grid=GRID, bands="B02", chunks={"time": -1, "y": -1, "x": -1})
    scene["fake"].fail_next(1, status=400)
    with pytest.raises(SourceError, match="Bad Request"):
        cube.compute()
    assert len(scene["fake"].pixel_requests) == 1


def test_metadata_request_is_retried(scene):
    scene["fake"].fail_next(2, status=500, call="computeValue")
    cube = xf.open_ee("TEST/S2", grid=GRID, bands="B02", retry=NO_RETRY_WAIT)
    assert cube.sizes["time"] == len(TIMES)
    assert scene["fake"].failures_served == 2


def test_backoff_schedule_and_classification():
    assert list(Backoff(max_retries=5, initial_delay=1, max_delay=5, jitter=0).delays()) == [
        1.0,
        2.0,
        4.0,
        5.0,
        5.0,
    ]
    jittered = list(Backoff(max_retries=3, initial_delay=1, jitter=0.5).delays())
    assert all(b <= d <= 1.5 * b for d, b in zip(jittered, [1, 2, 4], strict=True))
    assert is_transient(ee.EEException("Too many concurrent aggregations."))
    assert is_transient(ee.EEException("Internal Server Error (HTTP 500)"))
    assert not is_transient(ee.EEException("Image.select: Pattern 'X' did not match any bands."))
    with pytest.raises(ValueError, match="not retryable"):
        call_with_retry(
            lambda: (_ for _ in ()).throw(ValueError("not retryable")), backoff=Backoff(), what="x"
        )
    with pytest.raises(ValueError, match="max_retries"):
        Backoff(max_retries=-1)


# --------------------------------------------------------------------------------------------
# Already-built collections and images
# --------------------------------------------------------------------------------------------


def test_user_built_collection_with_server_side_mask(scene):
    def cloud_free(img):
        return img.updateMask(img.select("QA60").bitwiseAnd(1 << 10).eq(0))

    col = ee.ImageCollection("TEST/S2").map(cloud_free)
    cube = xf.open_ee(col, grid=GRID, start="2020-01-01", end="2021-01-01", bands=["B02"])
    expected = _truth(scene, range(4), ["B02"])
    qa = np.stack([scene["arrays"][i]["QA60"][WINDOW] for i in range(4)])[:, None]
    expected = np.where(qa & (1 << 10), np.nan, expected)
    np.testing.assert_array_equal(cube.values, expected)
    assert np.isnan(cube.values).any() and not np.isnan(cube.values).all()


def test_single_image_and_server_side_composite(scene):
    dem = xf.open_ee(ee.Image("TEST/DEM"), grid=GRID, chunks={"y": 32, "x": 32})
    assert dem.dims == ("band", "y", "x")
    np.testing.assert_allclose(dem.sel(band="elevation").values, scene["dem"][WINDOW], rtol=1e-6)

    median = ee.ImageCollection("TEST/S2").filterDate("2020-01-01", "2021-01-01").median()
    comp = xf.open_ee(median, grid=GRID, bands=["B02_median"])
    stack = _truth(scene, range(4), ["B02"])[:, 0]
    np.testing.assert_allclose(comp.values[0], np.nanmedian(stack, axis=0), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_unknown_collection_is_a_source_error(scene):
    with pytest.raises(SourceError, match=r"NOPE/MISSING.*not found"):
        xf.open_ee("NOPE/MISSING", grid=GRID)


def test_request_too_large_even_at_smallest_chunk(scene):
    with pytest.raises(RequestTooLargeError, match="exceeds the request limit of 100 bytes"):
        xf.open_ee("TEST/S2", grid=GRID, request_byte_limit=100)


def test_empty_selections(scene):
    with pytest.raises(EmptySelectionError, match="empty date range"):
        xf.open_ee("TEST/S2", grid=GRID, start="2020-05-01", end="2020-05-01")
    assert scene["fake"].value_requests == []  # rejected before asking the service
    with pytest.raises(EmptySelectionError, match="TEST/S2"):
        xf.open_ee("TEST/S2", grid=GRID, start="1999-01-01", end="2000-01-01")
    with pytest.raises(EmptySelectionError):
        xf.open_ee("TEST/S2", grid=GRID, filters={"CLOUDY_PIXEL_PERCENTAGE": ("gt", 99)})


def test_grid_too_wide(scene):
    wide = xf.grid((0, 0, 40_000, 10), CRS, 1)
    with pytest.raises(GridError, match="32768"):
        xf.open_ee("TEST/S2", grid=wide)


@pytest.mark.parametrize(
    ("filters", "match"),
    [
        ({"CLOUDY_PIXEL_PERCENTAGE": ("like", 20)}, "unknown filter operator 'like'"),
        ({"CLOUDY_PIXEL_PERCENTAGE": 20}, r"must be \(operator, value\)"),
        ({"SPACECRAFT": ("in", "S2A")}, "needs a list"),
    ],
)
def test_bad_filters(scene, filters, match):
    with pytest.raises(InputError, match=match):
        xf.open_ee("TEST/S2", grid=GRID, filters=filters)


def test_bad_bands_and_chunks(scene):
    with pytest.raises(BandError, match="B99"):
        xf.open_ee("TEST/S2", grid=GRID, bands=["B02", "B99"])
    with pytest.raises(BandError, match="unique"):
        xf.open_ee("TEST/S2", grid=GRID, bands=["B02", "B02"])
    with pytest.raises(InputError, match="unknown dims"):
        xf.open_ee("TEST/S2", grid=GRID, chunks={"lat": 4})
    with pytest.raises(InputError, match=r"single ee\.Image"):
        xf.open_ee(ee.Image("TEST/DEM"), grid=GRID, start="2020-01-01")


def test_uninitialised_earth_engine_is_a_source_error():
    ee.Reset()
    with pytest.raises(SourceError, match=r"ee.Initialize\(project="):
        xf.open_ee("TEST/S2", grid=GRID)


# --------------------------------------------------------------------------------------------
# The real service
# --------------------------------------------------------------------------------------------


@pytest.mark.network
def test_real_earth_engine_sentinel2():
    try:
        ee.Initialize(project=os.environ.get("EE_PROJECT"))
    except Exception as err:  # no credentials or no network
        pytest.skip(f"Earth Engine not available: {err}")
    g = xf.grid((500000, 4649000, 501280, 4650280), "EPSG:32632", 10)
    cube = xf.open_ee(
        "COPERNICUS/S2_SR_HARMONIZED",
        grid=g,
        start="2021-07-01",
        end="2021-08-01",
        bands=["B4", "B8"],
        filters={"CLOUDY_PIXEL_PERCENTAGE": ("lt", 20)},
    )
    assert geobox_of(cube) == g
    first = cube.isel(time=0).compute()
    assert first.dtype == np.float32 and np.nanmax(first.values) > 0
    assert json.dumps(cube.attrs)
    xr.testing.assert_equal(first.x, grid_coords(g)["x"])
