"""Hedged requests: cut tail latency by racing a second identical GET against a slow first one.

When a GET has not answered within the ``quantile`` (p95 by default) of the latencies observed so
far in this process, a second identical GET is sent and the first answer wins; the loser is
cancelled (async) or ignored (threads: a blocking call cannot be interrupted). Extra requests are
capped at ``max_extra`` (5%) of all requests. When the cap is reached at the moment a request
crosses the threshold, the hedge is deferred and re-checked as the budget refills, so the rare
very slow requests, the ones that set p99 batch times, still get their hedge.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import threading
import time
from typing import Any, Iterator

from .. import telemetry
from .._process_local import ProcessLocal, drop_process_local
from ..errors import ConfigError
from .base import ByteRange, ByteStore

__all__ = ["HedgedStore"]


class _LatencyTracker:
    """Recent latencies (a ring of ``window``) and their quantile, recomputed every 32 samples."""

    def __init__(self, window: int) -> None:
        self._ring: collections.deque[float] = collections.deque(maxlen=window)
        self._sorted: list[float] = []
        self._since = 0

    def add(self, seconds: float) -> None:
        self._ring.append(seconds)
        self._since += 1
        if self._since >= 32 or len(self._sorted) < 32:
            self._sorted = sorted(self._ring)
            self._since = 0

    def quantile(self, q: float) -> float | None:
        s = self._sorted
        if not s:
            return None
        return s[min(len(s) - 1, int(q * len(s)))]

    def __len__(self) -> int:
        return len(self._ring)


class _HedgeState:
    """One process's counters, latency tracker and (lazily) thread pool."""

    def __init__(self, window: int) -> None:
        self.lock = threading.Lock()
        self.tracker = _LatencyTracker(window)
        self.requests = 0
        self.hedges = 0
        self.hedge_wins = 0
        self.pool: cf.ThreadPoolExecutor | None = None

    def shutdown(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class HedgedStore(ByteStore):
    def __init__(self, inner: ByteStore, *, quantile: float = 0.95, max_extra: float = 0.05,
                 min_observations: int = 20, window: int = 2000, min_delay_s: float = 0.001,
                 max_threads: int = 64) -> None:
        if not 0 < quantile < 1:
            raise ConfigError(f"quantile must be in (0, 1), got {quantile!r}")
        if not 0 <= max_extra <= 1:
            raise ConfigError(f"max_extra must be in [0, 1], got {max_extra!r}")
        self.inner = inner
        self.quantile = quantile
        self.max_extra = max_extra
        self.min_observations = min_observations
        self.window = window
        self.min_delay_s = min_delay_s
        self.max_threads = max_threads

    # Counters, the tracker and the thread pool: see NOTE [ Per-process state ].
    _proc = ProcessLocal(lambda self: _HedgeState(self.window), close=lambda st: st.shutdown())

    def __getstate__(self) -> dict:
        return drop_process_local(self.__dict__)

    # ------------------------------------------------------------------ policy
    def _start(self) -> float | None:
        """Count a request; return the hedge delay, or None if too few observations yet."""
        st = self._proc
        with st.lock:
            st.requests += 1
            if len(st.tracker) < self.min_observations:
                return None
            q = st.tracker.quantile(self.quantile)
        return max(self.min_delay_s, q) if q is not None else None

    def _take_budget(self) -> bool:
        st = self._proc
        with st.lock:
            if st.hedges + 1 <= self.max_extra * st.requests:
                st.hedges += 1
                telemetry.count("hedges")
                return True
            return False

    def _observe(self, seconds: float) -> None:
        st = self._proc
        with st.lock:
            st.tracker.add(seconds)

    def _won(self) -> None:
        st = self._proc
        with st.lock:
            st.hedge_wins += 1
        telemetry.count("hedge_wins")

    def stats(self) -> dict[str, Any]:
        st = self._proc
        with st.lock:
            return {"requests": st.requests, "hedges": st.hedges, "hedge_wins": st.hedge_wins,
                    "hedge_delay_s": st.tracker.quantile(self.quantile)}

    # ------------------------------------------------------------------ async
    async def aget(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        delay = self._start()
        began = time.perf_counter()
        first = asyncio.ensure_future(self.inner.aget(key, byte_range))
        if delay is None:
            data = await first
            self._observe(time.perf_counter() - began)
            return data
        tasks = {first}
        second: asyncio.Future | None = None
        wait = delay
        try:
            while True:
                done, _ = await asyncio.wait(tasks, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if done:
                    winner = done.pop()
                    if winner.exception() is not None and len(tasks) > 1:
                        tasks.discard(winner)  # the other may still succeed
                        wait = None
                        continue
                    if winner is second:
                        self._won()
                    data = winner.result()
                    self._observe(time.perf_counter() - began)
                    return data
                if second is None and self._take_budget():
                    second = asyncio.ensure_future(self.inner.aget(key, byte_range))
                    tasks.add(second)
                    wait = None
                else:
                    wait = delay  # deferred: re-check the budget after another delay
        finally:
            for t in (first, second):
                if t is not None and not t.done():
                    t.cancel()

    # ------------------------------------------------------------------ threads
    def _threads(self) -> cf.ThreadPoolExecutor:
        st = self._proc
        with st.lock:
            if st.pool is None:
                st.pool = cf.ThreadPoolExecutor(self.max_threads, thread_name_prefix="cdl-hedge")
            return st.pool

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        delay = self._start()
        began = time.perf_counter()
        if delay is None:
            data = self.inner.get(key, byte_range)
            self._observe(time.perf_counter() - began)
            return data
        pool = self._threads()
        # The hedge threads are this store's, shared by every loader using it: carry the caller's
        # stats row along (NOTE [ Stats sink ] in telemetry.py).
        first = pool.submit(telemetry.carried(self.inner.get), key, byte_range)
        futures = {first}
        second = None
        wait: float | None = delay
        while True:
            done, _ = cf.wait(futures, timeout=wait, return_when=cf.FIRST_COMPLETED)
            if done:
                winner = done.pop()
                if winner.exception() is not None and len(futures) > 1:
                    futures.discard(winner)
                    wait = None
                    continue
                if winner is second:
                    self._won()
                for f in futures - {winner}:
                    f.cancel()  # not started yet: dropped; running: its answer is ignored
                data = winner.result()
                self._observe(time.perf_counter() - began)
                return data
            if second is None and self._take_budget():
                second = pool.submit(telemetry.carried(self.inner.get), key, byte_range)
                futures.add(second)
                wait = None
            else:
                wait = delay

    # ------------------------------------------------------------------ delegation
    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def describe(self, key: str) -> str:
        return self.inner.describe(key)

    def close(self) -> None:
        st = HedgedStore._proc.peek(self)
        if st is not None:
            st.shutdown()  # the counters stay
        self.inner.close()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __repr__(self) -> str:
        return f"HedgedStore({self.inner!r}, quantile={self.quantile}, max_extra={self.max_extra})"
