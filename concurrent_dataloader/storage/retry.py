"""Bounded, jittered exponential backoff for transient storage errors, with counters.

Why our own retry loop instead of botocore's: botocore retries inside the client, so the
caller cannot count attempts, and aiobotocore and botocore would each need configuring. The
S3 store turns botocore's retries off (``total_max_attempts=1``) and wraps every request
(including reading the response body, where connection resets actually happen) in
:meth:`RetryPolicy.call` / :meth:`RetryPolicy.acall`, so every attempt shows up in
:class:`RetryCounters`.

What is retried is what the AWS SDKs' "standard" retry mode retries: throttling (HTTP 429 and
the throttling codes ``SlowDown``, ``Throttling``, ``RequestLimitExceeded``...), transient
server errors (HTTP 500, 502, 503 and 504, and the codes ``RequestTimeout``,
``PriorRequestNotComplete``...), and connection errors (reset, refused, timeouts, a body cut
short). ``ExpiredToken`` is retried once, and only after the caller's ``refresh`` callback got new
credentials. Everything else fails at once: 501 ``NotImplemented``, every other 4xx (missing key,
access denied, bad request).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar

from .. import telemetry
from .._process_local import ProcessLocalValue

__all__ = ["RetryPolicy", "RetryCounters", "classify_error", "THROTTLE_CODES", "SERVER_ERROR_CODES",
           "TRANSIENT_STATUS", "EXPIRED_CODES"]

T = TypeVar("T")

THROTTLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded",
    "ProvisionedThroughputExceededException", "BandwidthLimitExceeded", "EC2ThrottledException",
})
# Transient error codes (retried whatever the status), as in the SDKs' standard mode.
SERVER_ERROR_CODES = frozenset({
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",
})
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
# The credentials expired: retried once, after the caller refreshed them.
EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException"})


def _client_error_info(exc: BaseException) -> tuple[str, int | None] | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = str((response.get("Error") or {}).get("Code") or "")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    status = status if isinstance(status, int) else None
    if not code and status is None:
        return None
    return code, status


def _connection_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError, asyncio.TimeoutError]
    try:
        from botocore import exceptions as be

        types += [be.ConnectionError, be.HTTPClientError, be.ResponseStreamingError, be.IncompleteReadError,
                  be.ReadTimeoutError, be.ConnectTimeoutError]
    except ImportError:  # botocore is an optional extra
        pass
    try:
        import aiohttp

        types += [aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError]
    except ImportError:
        pass
    try:
        from urllib3 import exceptions as ue

        types += [ue.ProtocolError, ue.ReadTimeoutError]
    except ImportError:
        pass
    return tuple(types)


_CONN_TYPES: tuple[type[BaseException], ...] | None = None


def _new_rng() -> random.Random:
    return random.Random(int.from_bytes(os.urandom(8), "little"))


# NOTE: forked workers inherit the parent's ``random`` state; with a shared state every worker
# would draw the same "jitter" and retry in lockstep, which is what jitter is meant to prevent.
# So each process seeds its own from the OS (NOTE [ Per-process state ]).
_RNG = ProcessLocalValue(_new_rng)


def _rng() -> random.Random:
    return _RNG.get()


def classify_error(exc: BaseException) -> str | None:
    """``"throttle"``, ``"server"``, ``"connection"`` for retryable errors, ``"expired"`` for
    expired credentials (retried once after a refresh), ``None`` for the rest."""
    global _CONN_TYPES
    info = _client_error_info(exc)
    if info is not None:
        code, status = info
        if code in THROTTLE_CODES or status == 429:
            return "throttle"
        if code in SERVER_ERROR_CODES or status in TRANSIENT_STATUS:
            return "server"
        if code in EXPIRED_CODES:
            return "expired"
        return None
    if _CONN_TYPES is None:
        _CONN_TYPES = _connection_error_types()
    if isinstance(exc, _CONN_TYPES):
        return "connection"
    return None


class RetryCounters:
    """Per-process, thread-safe counts of attempts and retries by cause.

    NOTE: counters live in one process. Each DataLoader worker has its own copy (they are
    reset when a store is pickled to a worker). Every count is also forwarded to the process's
    telemetry row, so ``concurrent_dataloader.DataLoader.stats()`` aggregates them across workers
    (``attempts`` also counts as ``requests``).
    """

    FIELDS = ("attempts", "retries", "throttled", "server_errors", "connection_errors", "gave_up")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n
        telemetry.count(name, n)
        if name == "attempts":
            telemetry.count("requests", n)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(self.FIELDS, 0)

    def __getattr__(self, name: str) -> int:
        if name in RetryCounters.FIELDS:
            return self.snapshot()[name]
        raise AttributeError(name)

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def __repr__(self) -> str:
        return f"RetryCounters({self.snapshot()})"


# Expired credentials have no counter of their own (the telemetry row is fixed); their one retry
# counts in "retries".
_CAUSE_FIELD = {"throttle": "throttled", "server": "server_errors", "connection": "connection_errors"}


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure.

    max_attempts
        Total attempts including the first (1 = never retry).
    base_delay, max_delay
        Backoff before retry ``n`` (1-based) is drawn uniformly from
        ``[0, min(max_delay, base_delay * multiplier ** (n - 1))]`` ("full jitter"), so many
        workers throttled at once do not retry in lockstep.
    max_elapsed
        Seconds since the first attempt after which no new attempt starts (``None``: only
        ``max_attempts`` bounds it). Each attempt is itself bounded by the store's connect and
        read timeouts, so the worst case is about ``max_elapsed`` plus one attempt.
    """

    max_attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 5.0
    multiplier: float = 2.0
    max_elapsed: float | None = None
    classify: Callable[[BaseException], str | None] = field(default=classify_error, compare=False, repr=False)

    def __post_init__(self) -> None:
        from ..errors import ConfigError

        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigError(f"RetryPolicy.max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.max_elapsed is not None and not self.max_elapsed > 0:
            raise ConfigError(f"RetryPolicy.max_elapsed must be None or > 0, got {self.max_elapsed!r}")
        if self.base_delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ConfigError("RetryPolicy delays must be >= 0 and multiplier >= 1, got "
                              f"base_delay={self.base_delay}, max_delay={self.max_delay}, multiplier={self.multiplier}")

    def backoff(self, retry_number: int) -> float:
        cap = min(self.max_delay, self.base_delay * self.multiplier ** max(0, retry_number - 1))
        return _rng().uniform(0.0, cap)

    def _should_retry(self, exc: BaseException, attempt: int, counters: RetryCounters | None,
                      started: float, delay: float, refresh: Callable[[], bool] | None, refreshed: list[bool]) -> bool:
        cause = self.classify(exc)
        if cause is None:
            return False
        if counters is not None and cause in _CAUSE_FIELD:
            counters.add(_CAUSE_FIELD[cause])
        if cause == "expired":
            # NOTE: once per call, and only if the caller could get other credentials.
            if refresh is None or refreshed[0] or not refresh():
                return False
            refreshed[0] = True
            if counters is not None:
                counters.add("retries")
            return True
        elapsed = time.monotonic() - started
        out_of_time = self.max_elapsed is not None and elapsed + delay >= self.max_elapsed
        if attempt >= self.max_attempts or out_of_time:
            if counters is not None:
                counters.add("gave_up")
            exc.add_note(f"gave up after {attempt} attempt(s) in {elapsed:.1f} s ({cause} errors); "
                         f"RetryPolicy(max_attempts={self.max_attempts}, max_elapsed={self.max_elapsed})")
            return False
        if counters is not None:
            counters.add("retries")
        return True

    def call(self, fn: Callable[[], T], counters: RetryCounters | None = None,
             refresh: Callable[[], bool] | None = None) -> T:
        """Run ``fn()`` until it succeeds, fails permanently, or attempts run out. ``refresh()``
        is called on expired credentials; it returns whether it got new ones (then one retry)."""
        attempt = 0
        refreshed = [False]
        started = time.monotonic()
        while True:
            attempt += 1
            if counters is not None:
                counters.add("attempts")
            delay = self.backoff(attempt)
            try:
                return fn()
            except Exception as exc:
                if not self._should_retry(exc, attempt, counters, started, delay, refresh, refreshed):
                    raise
            time.sleep(delay)

    async def acall(self, fn: Callable[[], Awaitable[T]], counters: RetryCounters | None = None,
                    refresh: Callable[[], bool] | None = None) -> T:
        """The coroutine version of :meth:`call`: ``fn()`` returns a fresh awaitable per attempt."""
        attempt = 0
        refreshed = [False]
        started = time.monotonic()
        while True:
            attempt += 1
            if counters is not None:
                counters.add("attempts")
            delay = self.backoff(attempt)
            try:
                return await fn()
            except Exception as exc:
                if not self._should_retry(exc, attempt, counters, started, delay, refresh, refreshed):
                    raise
            await asyncio.sleep(delay)
