"""Throttle-aware adaptive concurrency (``num_fetch_workers="auto"``): AIMD, like TCP.

Each process runs an :class:`AIMDController` that sets how many fetches may be in flight:

* it grows while throughput improves and latency stays near the best seen (slow start x1.5 per
  window below the last known-good ceiling, then ~12% per window);
* it cuts to 0.7x on throttling (503 SlowDown, 429) or a burst of errors, and remembers the ceiling;
* it backs off gently when latency climbs without a throughput gain (queueing, e.g. CPU-bound);
* it never exceeds its share of a **global budget** shared by all worker processes of the loader
  (:class:`SharedBudget`), so many workers cannot stampede one prefix.

Throttle signals come from the process's telemetry row (the retry policy counts ``throttled``).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any, Callable

__all__ = ["AIMDController", "Limiter", "AsyncLimiter", "SharedBudget"]


class SharedBudget:
    """The in-flight limits of all workers, in shared memory, capped by ``total``.

    Shared memory made by the main process with the loader's multiprocessing context and passed
    to workers at start-up (NOTE [ Fork safety ] in ``concurrent_dataloader/__init__.py``); a
    process-shared lock guards the read-modify-write.
    """

    def __init__(self, total: int, slots: int, context: Any) -> None:
        self.total = total
        self._limits = context.Array("i", slots, lock=False)
        self._lock = context.Lock()

    def request(self, slot: int, wanted: int) -> int:
        """Set ``slot``'s limit to ``wanted`` or to what the budget leaves; returns the granted limit."""
        with self._lock:
            others = sum(self._limits) - self._limits[slot]
            granted = max(1, min(wanted, self.total - others))
            self._limits[slot] = granted
        return granted

    def release(self, slot: int) -> None:
        with self._lock:
            self._limits[slot] = 0


class AIMDController:
    def __init__(self, max_limit: int, *, min_limit: int = 1, initial: int = 4,
                 budget: SharedBudget | None = None, slot: int = 0,
                 throttle_count: Callable[[], float] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_limit = max_limit
        self.min_limit = min_limit
        self.budget = budget
        self.slot = slot
        self._throttles = throttle_count or (lambda: 0.0)
        self._clock = clock
        self._lock = threading.Lock()
        self.limit = self._grant(max(min_limit, min(initial, max_limit)))
        self.ceiling = max_limit          # like TCP's ssthresh
        self.best_latency: float | None = None
        self._prev_throughput = 0.0
        self._cooldown = False
        self.w_max: int | None = None     # the limit at the last throttle
        self._plateau = 0
        self._reset_window()
        self.history: list[tuple[float, int]] = []  # (time, limit) for plots and tests

    def _grant(self, wanted: int) -> int:
        wanted = max(self.min_limit, min(self.max_limit, wanted))
        return self.budget.request(self.slot, wanted) if self.budget is not None else wanted

    def _reset_window(self) -> None:
        self._w_start = self._clock()
        self._w_done = 0
        self._w_errors = 0
        self._w_latency = 0.0
        self._w_throttles_at = self._throttles()

    def on_complete(self, latency_s: float, ok: bool = True) -> None:
        with self._lock:
            self._w_done += 1
            self._w_errors += 0 if ok else 1
            self._w_latency += latency_s
            now = self._clock()
            if self._w_done >= max(8, 2 * self.limit) and now - self._w_start >= 0.05:
                self._adjust(now)

    def _adjust(self, now: float) -> None:
        elapsed = now - self._w_start
        throughput = self._w_done / elapsed
        latency = self._w_latency / self._w_done
        throttled = self._throttles() - self._w_throttles_at
        errors = self._w_errors / self._w_done
        if self.best_latency is None or latency < self.best_latency:
            self.best_latency = latency
        else:  # forget slowly, so a one-off fast window does not pin the baseline forever
            self.best_latency *= 1.005
        old = self.limit
        if throttled > 0 or errors > 0.05:
            if self._cooldown:
                # Throttles seen in the window right after a cut were mostly provoked before it
                # (retries land late): cut at most once per two windows, as TCP does once per RTT.
                new = old
                self._cooldown = False
            else:
                # Multiplicative decrease by 0.7 (as CUBIC), not Reno's 0.5: halving makes the
                # sawtooth average well below the throttle point.
                self.ceiling = max(self.min_limit, int(old * 0.7))
                self.w_max = old
                self._plateau = 0
                new = self.ceiling
                self._cooldown = True
        else:
            self._cooldown = False
            if latency <= 1.5 * self.best_latency and throughput >= 0.97 * self._prev_throughput:
                new = self._grow(old)
            elif latency > 1.8 * self.best_latency and throughput < 1.05 * self._prev_throughput:
                new = old - max(1, old // 8)
                self.ceiling = new  # queueing: leave slow start, grow additively from here
            else:
                new = old
        self.limit = self._grant(new)
        self._prev_throughput = throughput
        self.history.append((now, self.limit))
        self._reset_window()

    def _grow(self, old: int) -> int:
        if old < self.ceiling:
            # slow start, x1.5 per window (doubling overshoots a throttling server into a retry storm)
            return min(old + max(1, old // 2), self.ceiling)
        if self.w_max is None:
            return old + max(1, old // 8)  # no throttling seen: ~12% per window
        if old + 1 < self.w_max:
            return old + 1  # recovering towards the point where we were throttled
        # At the last throttle point: hold a few windows before probing beyond it. Throttles in
        # the middle of a batch stall the whole batch (in-order delivery), so they cost more
        # than the throughput a probe can win.
        self._plateau += 1
        if self._plateau < 4:
            return old
        self.w_max = None
        return old + 1

    def close(self) -> None:
        if self.budget is not None:
            self.budget.release(self.slot)


class Limiter:
    """A blocking counting gate whose size can change (threads).

    NOTE: a release wakes as many waiters as there are free slots, so a limit that grew while
    fetches were running is used as soon as the next one finishes.
    """

    def __init__(self, limit_fn: Callable[[], int]) -> None:
        self._limit_fn = limit_fn
        self._active = 0
        self._cond = threading.Condition()

    def acquire(self) -> None:
        with self._cond:
            while self._active >= self._limit_fn():
                self._cond.wait()
            self._active += 1

    def release(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify(max(1, self._limit_fn() - self._active))

    def __enter__(self) -> "Limiter":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class AsyncLimiter:
    """The same for coroutines on one event loop (single thread: no locks).

    NOTE: every operation is O(1), so a batch of N samples costs O(N) however many wait: a woken
    waiter was already popped by the releaser, and a cancelled one stays in the deque, done, until
    a releaser pops and skips it (removing it from the middle of the deque would cost O(waiters)
    per wake-up: a 16,000-sample batch took 84 s that way).
    """

    def __init__(self, limit_fn: Callable[[], int]) -> None:
        self._limit_fn = limit_fn
        self._active = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def __aenter__(self) -> "AsyncLimiter":
        while self._active >= self._limit_fn():
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._wake(1)  # woken, then cancelled before taking the slot: pass the wake-up on
                raise
        self._active += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._active -= 1
        self._wake(max(1, self._limit_fn() - self._active))

    def _wake(self, free: int) -> None:
        waiters = self._waiters
        while free and waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1
