"""num_fetch_workers="auto": the AIMD controller's bounds and its behaviour on a simulated server."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import pytest
import torch

from concurrent_dataloader import DataLoader, FetchConfig, telemetry
from concurrent_dataloader.loader.adaptive import AIMDController, AsyncLimiter, Limiter, SharedBudget


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def drive(ctrl, clock, rounds, latency_of, throttles=None, per_round=None):
    """Feed windows of completions; latency_of(limit) models the server."""
    for _ in range(rounds):
        n = per_round or max(8, 2 * ctrl.limit)
        lat = latency_of(ctrl.limit)
        for _ in range(n):
            clock.t += lat / ctrl.limit
            if throttles is not None:
                throttles(ctrl.limit)
            ctrl.on_complete(lat)


def test_grows_to_max_when_latency_is_flat():
    clock = FakeClock()
    ctrl = AIMDController(64, clock=clock)
    drive(ctrl, clock, 40, latency_of=lambda limit: 0.05)
    assert ctrl.limit == 64
    assert all(1 <= l <= 64 for _, l in ctrl.history)


def test_cuts_on_throttling_and_settles_near_the_rate_limit():
    clock = FakeClock()
    count = [0.0]

    def throttles(limit):
        if limit > 20:  # the server throttles above 20 in flight
            count[0] += 1

    ctrl = AIMDController(128, clock=clock, throttle_count=lambda: count[0])
    drive(ctrl, clock, 60, latency_of=lambda limit: 0.05, throttles=throttles)
    limits = [l for _, l in ctrl.history[-20:]]
    assert max(limits) <= 2 * 20 + 3
    assert min(limits) >= 5
    # multiplicative decrease (x0.7) happened
    pairs = list(zip([l for _, l in ctrl.history], [l for _, l in ctrl.history][1:]))
    assert any(b <= int(a * 0.7) + 1 and a > 20 for a, b in pairs)


def test_backs_off_when_latency_rises_without_throughput_gain():
    clock = FakeClock()
    # A CPU-bound client: beyond 8 in flight, latency grows linearly (throughput is flat).
    ctrl = AIMDController(64, clock=clock)
    drive(ctrl, clock, 60, latency_of=lambda limit: 0.02 * max(1.0, limit / 8))
    tail = [l for _, l in ctrl.history[-10:]]
    assert max(tail) < 40


def test_errors_count_as_congestion():
    clock = FakeClock()
    ctrl = AIMDController(64, initial=32, clock=clock)
    for _ in range(400):
        clock.t += 0.01
        ctrl.on_complete(0.05, ok=False)
    assert ctrl.limit <= 16


def test_shared_budget_caps_the_sum_across_workers():
    budget = SharedBudget(20, 3, mp.get_context("fork"))
    clocks = [FakeClock() for _ in range(3)]
    ctrls = [AIMDController(64, budget=budget, slot=i, clock=clocks[i]) for i in range(3)]
    for _ in range(30):
        for c, clock in zip(ctrls, clocks):
            drive(c, clock, 1, latency_of=lambda limit: 0.05)
            assert sum(x.limit for x in ctrls) <= 20 + 2  # each keeps >= 1
    assert sum(x.limit for x in ctrls) >= 18
    for c in ctrls:
        c.close()
    assert budget.request(0, 50) == 20


def test_limiter_follows_a_changing_limit():
    limit = [2]
    gate = Limiter(lambda: limit[0])
    active, peak = [0], [0]
    lock = threading.Lock()

    def work():
        with gate:
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.05)
            with lock:
                active[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    time.sleep(0.02)
    assert peak[0] == 2
    limit[0] = 6
    for t in threads:
        t.join()
    assert peak[0] == 6


async def test_async_limiter_caps_and_grows():
    import asyncio

    limit = [3]
    gate = AsyncLimiter(lambda: limit[0])
    active, peak = [0], [0]

    async def work():
        async with gate:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            await asyncio.sleep(0.02)
            active[0] -= 1

    await asyncio.gather(*(work() for _ in range(10)))
    assert peak[0] == 3
    limit[0] = 10
    peak[0] = 0
    await asyncio.gather(*(work() for _ in range(10)))
    assert peak[0] == 10


def test_auto_config_validation():
    assert FetchConfig(num_fetch_workers="auto").adaptive
    assert FetchConfig(num_fetch_workers="auto", max_fetch_workers=500).concurrency == 256
    with pytest.raises(ValueError, match="'fast'"):
        FetchConfig(num_fetch_workers="fast")
    with pytest.raises(ValueError, match="fetch_budget"):
        FetchConfig(num_fetch_workers="auto", fetch_budget=0)


class ThrottlingDataset(torch.utils.data.Dataset):
    """A simulated server: more than ``cap`` requests in flight (per process) are throttled, which
    costs a retry; throttles are counted as the S3 retry policy would."""

    def __init__(self, n, cap, delay=0.01):
        self.n, self.cap, self.delay = n, cap, delay
        self._lock = None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self._lock is None:
            self._lock, self._active, self._peak = threading.Lock(), 0, 0
        with self._lock:
            self._active += 1
            over = self._active > self.cap
        try:
            if over:
                telemetry.count("throttled")
                time.sleep(self.delay * 3)  # backoff + retry
            time.sleep(self.delay)
        finally:
            with self._lock:
                self._active -= 1
        return i


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_auto_loader_delivers_everything_and_stays_near_the_throttle_point(fetch_impl):
    ds = ThrottlingDataset(n=1200, cap=12)
    dl = DataLoader(ds, batch_size=16, num_workers=0, num_fetch_workers="auto", max_fetch_workers=64,
                    batch_pool=8, fetch_impl=fetch_impl)
    out = torch.cat(list(dl))
    assert out.tolist() == list(range(1200))
    ctrl = dl._main_fetcher.controller
    assert ctrl is not None and ctrl.history
    assert max(l for _, l in ctrl.history) <= 64
    late = [l for _, l in ctrl.history[len(ctrl.history) // 2:]]
    assert sum(late) / len(late) <= 2 * 12 + 4
    s = dl.stats()
    assert s["throttled"] < 1200 / 4  # far fewer throttles than samples
    dl.close()
