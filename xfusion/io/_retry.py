"""Calls to remote services: bounded exponential backoff, and messages free of credentials.

Retries: Earth Engine's 429 (rate limit) and 5xx answers are retried on a :class:`Backoff`
schedule, at most ``max_retries`` times and, when ``timeout`` is set, for at most that many
seconds per request; then a :class:`~xfusion.errors.SourceError` names the request and the
number of attempts.

Credentials: every message that quotes an upstream error or a URL goes through :func:`redact`,
which removes OAuth tokens, API keys, signed-URL signatures, ``Authorization`` headers and private
keys; exceptions chained to ours are replaced by redacted copies (:func:`sanitized`) when their
text holds a secret, so tracebacks and logs never show one.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from xfusion.errors import InputError, SourceError

__all__ = [
    "Backoff",
    "RedactedError",
    "call_with_retry",
    "has_secret",
    "is_transient",
    "redact",
    "sanitized",
]

T = TypeVar("T")

logger = logging.getLogger("xfusion.io")

# Earth Engine turns HTTP errors into ``EEException(reason)``; the status code is not kept, so the
# transient ones are recognised by their reason text (googleapiclient's or Earth Engine's own).
_TRANSIENT = re.compile(
    r"\b(429|500|502|503|504)\b|too many requests|too many concurrent|rate limit|"
    r"internal server error|internal error|service unavailable|bad gateway|gateway timeout|"
    r"backend error|temporarily unavailable|connection (reset|aborted)",
    re.IGNORECASE,
)
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})

# --------------------------------------------------------------------------------------------
# Credentials out of messages
# --------------------------------------------------------------------------------------------

_REDACTED = "<redacted>"
# Names whose values are secrets, as JSON/dict fields (service-account keys, OAuth answers) or
# ``name=value`` text, and further ones as URL query parameters (API keys, signed URLs: S3, GCS,
# Azure SAS).
_SECRET_FIELDS = (
    r"private_key(?:_id)?|client_secret|refresh_token|access_token|id_token|auth_token|token|"
    r"api_?key|password|passwd|secret|x-amz-(?:signature|security-token|credential)|"
    r"x-goog-(?:signature|credential)"
)
_SECRET_PARAMETERS = rf"{_SECRET_FIELDS}|key|sig|signature|credential"
_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys, whole or cut off (by a truncated message, or at a quote in JSON).
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?"
            r"(?:-----END [A-Z ]*PRIVATE KEY-----|(?=[\"'])|\Z)",
            re.DOTALL,
        ),
        "<redacted private key>",
    ),
    # Authorization headers, whatever the scheme (Bearer, Basic, token ...).
    (
        re.compile(
            r"""(authorization["']?\s*[:=]\s*["']?)(?!<redacted)(?:[A-Za-z]+\s+)?"""
            r"""[^\s"',;})\]>]+""",
            re.I,
        ),
        rf"\1{_REDACTED}",
    ),
    (re.compile(r"\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*", re.I), rf"\1 {_REDACTED}"),
    # Query parameters of URLs.
    (
        re.compile(rf"([?&;](?:{_SECRET_PARAMETERS})=)[^&#\s'\"<>]+", re.I),
        rf"\1{_REDACTED}",
    ),
    # "name": "value", 'name': 'value', name=value, name: value.
    (
        re.compile(
            rf"""((?<![\w-])["']?(?:{_SECRET_FIELDS})["']?\s*[:=]\s*)(?!<redacted)"""
            r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s&,;}\])"']+)""",
            re.I,
        ),
        rf"\1{_REDACTED}",
    ),
    # Credentials in a URL's user-info part: scheme://user:password@host.
    (re.compile(r"\b([a-z][a-z0-9+.\-]*://)[^/\s@:]+:[^/\s@]+@", re.I), rf"\1{_REDACTED}@"),
    # Token shapes recognisable on their own: Google OAuth access and refresh tokens, Google API
    # keys, JSON Web Tokens (ID tokens, signed assertions) and AWS access key ids.
    (re.compile(r"\bya29\.[0-9A-Za-z\-_.]+"), _REDACTED),
    (re.compile(r"\b1//[0-9A-Za-z\-_]{20,}"), _REDACTED),
    (re.compile(r"\bAIza[0-9A-Za-z\-_]{20,}"), _REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"), _REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), _REDACTED),
)


def redact(text: Any) -> str:
    r"""Return ``str(text)`` with tokens, keys, signatures and passwords replaced by ``<redacted>``.

    Applied to every message of xfusion that quotes an upstream error or a URL.

    Examples
    --------
    >>> redact("GET https://x.org/a.tif?sv=2021&sig=abc%2Fdef returned 403")
    'GET https://x.org/a.tif?sv=2021&sig=<redacted> returned 403'
    >>> redact("HTTP 401 (Authorization: Bearer ya29.a0AfB_secret)")
    'HTTP 401 (Authorization: <redacted>)'
    >>> redact('{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nMII"}')
    '{"type": "service_account", "private_key": <redacted>}'
    """
    out = str(text)
    for pattern, replacement in _SECRETS:
        out = pattern.sub(replacement, out)
    return out


def has_secret(text: Any) -> bool:
    """Tell whether :func:`redact` would change ``str(text)``."""
    text = str(text)
    return redact(text) != text


class RedactedError(Exception):
    """Stands in, in an exception chain, for an upstream error whose message held a secret.

    Its message is ``"<module>.<type>: <redacted message>"`` of the error it replaces.
    """


def _link(err: BaseException) -> BaseException | None:
    """Return the exception that Python's traceback prints before ``err`` (cause or context)."""
    if err.__cause__ is not None:
        return err.__cause__
    return None if err.__suppress_context__ else err.__context__


def _chain(err: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def sanitized(err: BaseException) -> BaseException:
    """Return ``err``, or a :class:`RedactedError` copy when its chain's messages hold a secret.

    Chain xfusion's exceptions to ``sanitized(upstream)`` instead of ``upstream`` (and raise them
    outside the ``except`` block, so that Python does not attach ``upstream`` as the context):
    the traceback then keeps the upstream error's type and message, without the secret.

    Examples
    --------
    >>> err = RuntimeError("403 for https://x.org/a.tif?key=AIzaSyExampleExampleExample01")
    >>> str(sanitized(err))
    'builtins.RuntimeError: 403 for https://x.org/a.tif?key=<redacted>'
    >>> plain = RuntimeError("503 Service Unavailable")
    >>> sanitized(plain) is plain
    True
    """
    if not any(has_secret(e) or has_secret(repr(e.args)) for e in _chain(err)):
        return err
    kind = type(err)
    copy = RedactedError(f"{kind.__module__}.{kind.__qualname__}: {redact(err)}")
    inner = _link(err)
    if inner is not None:
        copy.__cause__ = sanitized(inner)
    return copy


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Retry schedule: ``initial_delay * factor**k`` seconds (capped), at most ``max_retries``.

    The time one request may take is bounded: at most ``max_retries`` waits of at most
    ``max_delay * (1 + jitter)`` seconds each and, when ``timeout`` is set, no retry starts
    later than ``timeout`` seconds after the first attempt.

    Parameters
    ----------
    max_retries : int
        Retries after the first attempt (0 disables retrying); a request is tried at most
        ``max_retries + 1`` times.
    initial_delay : float
        Seconds before the first retry.
    factor : float
        Growth of the delay from one retry to the next.
    max_delay : float
        Upper bound of a single delay, in seconds.
    jitter : float
        Fraction of each delay added at random (0 for a deterministic schedule), so that many
        workers hitting a rate limit together do not retry in lockstep.
    sleep : callable, optional
        Function called with each delay; ``time.sleep`` when None (tests pass a recorder).
    timeout : float, optional
        Seconds after the first attempt beyond which no retry starts: when the next wait would
        end later, the request fails at once. A request then takes at most ``timeout`` seconds
        plus the duration of its last attempt. None: limited by ``max_retries`` only.
    clock : callable, optional
        Function returning the current time in seconds for ``timeout``; ``time.monotonic``
        when None.

    Raises
    ------
    InputError
        A negative count or delay, a factor below 1, or a non-positive timeout.

    Examples
    --------
    >>> list(Backoff(max_retries=4, initial_delay=1, max_delay=3, jitter=0).delays())
    [1.0, 2.0, 3.0, 3.0]
    """

    max_retries: int = 5
    initial_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.25
    sleep: Callable[[float], Any] | None = None
    timeout: float | None = None
    clock: Callable[[], float] | None = None

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_retries, int)
            or self.max_retries < 0
            or self.initial_delay < 0
            or self.factor < 1
            or self.max_delay < 0
            or self.jitter < 0
            or (self.timeout is not None and not self.timeout > 0)
        ):
            raise InputError(
                "Backoff needs an integer max_retries >= 0, initial_delay >= 0, factor >= 1, "
                f"max_delay >= 0, jitter >= 0 and timeout > 0 or None; got {self!r}"
            )

    def delays(self) -> Iterator[float]:
        """Yield the delay before each retry, in seconds."""
        for k in range(self.max_retries):
            base = min(self.initial_delay * self.factor**k, self.max_delay)
            yield float(base * (1.0 + self.jitter * random.random()) if self.jitter else base)


def is_transient(err: BaseException) -> bool:
    """Tell whether ``err`` is worth retrying.

    Rate limiting (429), server errors (5xx), dropped connections and timeouts are.
    """
    if isinstance(err, ConnectionError | TimeoutError):
        return True
    status = getattr(getattr(err, "resp", None), "status", None)
    if status is not None:
        try:
            return int(status) in _TRANSIENT_STATUS
        except (TypeError, ValueError):
            pass
    return bool(_TRANSIENT.search(str(err)))


def call_with_retry(
    func: Callable[..., T],
    *args: Any,
    backoff: Backoff,
    what: str,
    catch: type[BaseException] | tuple[type[BaseException], ...] = Exception,
) -> T:
    """Call ``func(*args)``, retrying transient failures on ``backoff``'s schedule.

    Errors that are not transient propagate unchanged at once. When the retries are spent (or the
    next one would pass ``backoff.timeout``), a :class:`~xfusion.errors.SourceError` naming
    ``what``, the number of attempts and the last cause (redacted) is raised, chained to a
    :func:`sanitized` copy of the cause. Each retry is logged at DEBUG level on the
    ``xfusion.io`` logger, redacted too.

    Examples
    --------
    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise RuntimeError("Too Many Requests")
    ...     return "ok"
    >>> call_with_retry(flaky, backoff=Backoff(initial_delay=0), what="demo")
    'ok'
    >>> len(calls)
    3
    """
    sleep = backoff.sleep or time.sleep
    clock = backoff.clock or time.monotonic
    delays = backoff.delays()
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return func(*args)
        except catch as err:
            if not is_transient(err):
                raise
            failure = err
        delay = next(delays, None)
        elapsed = clock() - start
        if delay is None:
            times = "time" if backoff.max_retries == 1 else "times"
            reason = (
                f"after {attempt} attempts (retried {backoff.max_retries} {times} with backoff)"
            )
            break
        if backoff.timeout is not None and elapsed + delay > backoff.timeout:
            reason = (
                f"after {attempt} attempts in {elapsed:.3g} s (the next retry, in {delay:.3g} s, "
                f"would pass the timeout of {backoff.timeout:g} s)"
            )
            break
        logger.debug(
            "%s: attempt %d of %d failed (%s); retrying in %.3g s",
            what,
            attempt,
            backoff.max_retries + 1,
            redact(failure),
            delay,
        )
        sleep(delay)
    # Raised outside the except block so that the unredacted error is not attached as context.
    raise SourceError(redact(f"{what} failed {reason}; last error: {failure}")) from sanitized(
        failure
    )
