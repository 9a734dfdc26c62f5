"""Bounded exponential backoff for calls to remote services (Earth Engine's 429 and 5xx)."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from xfusion.errors import SourceError

__all__ = ["Backoff", "call_with_retry", "is_transient"]

T = TypeVar("T")

# Earth Engine turns HTTP errors into ``EEException(reason)``; the status code is not kept, so the
# transient ones are recognised by their reason text (googleapiclient's or Earth Engine's own).
_TRANSIENT = re.compile(
    r"\b(429|500|502|503|504)\b|too many requests|too many concurrent|rate limit|"
    r"internal server error|internal error|service unavailable|bad gateway|gateway timeout|"
    r"backend error|temporarily unavailable|connection (reset|aborted)",
    re.IGNORECASE,
)
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Backoff:
    """Retry schedule: ``initial_delay * factor**k`` seconds (capped), at most ``max_retries``.

    Parameters
    ----------
    max_retries : int
        Retries after the first attempt (0 disables retrying).
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

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.initial_delay < 0 or self.factor < 1 or self.jitter < 0:
            raise ValueError(
                "Backoff needs max_retries >= 0, initial_delay >= 0, factor >= 1, jitter >= 0; "
                f"got {self!r}"
            )

    def delays(self) -> Iterator[float]:
        """Yield the delay before each retry, in seconds."""
        for k in range(self.max_retries):
            base = min(self.initial_delay * self.factor**k, self.max_delay)
            yield float(base * (1.0 + self.jitter * random.random()) if self.jitter else base)


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` is worth retrying: rate limiting (429) or a server error (5xx)."""
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

    Errors that are not transient propagate unchanged at once. When every retry failed, a
    :class:`~xfusion.errors.SourceError` naming ``what``, the number of attempts and the last
    cause is raised.

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
    delays = backoff.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            return func(*args)
        except catch as err:
            if not is_transient(err):
                raise
            delay = next(delays, None)
            if delay is None:
                raise SourceError(
                    f"{what} failed after {attempt} attempts (retried {backoff.max_retries} times "
                    f"with backoff); last error: {err}"
                ) from err
            sleep(delay)
