"""Large batches of cheap samples (issue 14, item 6): linear in the batch size, little per-sample cost.

No wall-clock asserts here (see benchmarking/bench_large_batch.py for the timings and the 1 s
target); these tests count operations instead.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import time

import pytest
import torch
from torch.utils.data import Dataset

from concurrent_dataloader import ConcurrentDataset, DataLoader
from concurrent_dataloader.loader import fetchers
from concurrent_dataloader.loader.adaptive import AsyncLimiter
from concurrent_dataloader.loader.config import FetchConfig

IMPLS = ["threaded", "asyncio"]


class Trivial(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([i])


class TrivialFetchDecode(ConcurrentDataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def fetch_raw(self, i: int) -> int:
        return i

    def decode(self, i: int, raw: int) -> torch.Tensor:
        return torch.tensor([raw])


class Slow(Trivial):
    def __getitem__(self, i: int) -> torch.Tensor:
        time.sleep(0.002)  # 2 ms of latency: concurrency pays
        return torch.tensor([i])


class AsyncSlowFetch(TrivialFetchDecode):
    async def fetch_raw_async(self, i: int) -> int:
        await asyncio.sleep(0.002)
        return i


# --------------------------------------------------------------------------- AsyncLimiter
class _NoRemoveDeque(collections.deque):
    """Counts pops; removing from the middle (O(n)) is an error."""

    pops = 0

    def popleft(self):
        type(self).pops += 1
        return super().popleft()

    def remove(self, value):
        raise AssertionError("AsyncLimiter removed a waiter from the middle of its deque (O(n))")


def _limiter_run(n: int, limit: int) -> tuple[int, int, AsyncLimiter]:
    limiter = AsyncLimiter(lambda: limit)
    limiter._waiters = _NoRemoveDeque()
    _NoRemoveDeque.pops = 0
    active = peak = 0

    async def one():
        nonlocal active, peak
        async with limiter:
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0)
            active -= 1

    async def main():
        await asyncio.gather(*(one() for _ in range(n)))

    asyncio.run(main())
    return peak, _NoRemoveDeque.pops, limiter


def test_async_limiter_is_O1_per_operation_and_never_exceeds_its_limit():
    peak, pops_small, limiter = _limiter_run(1000, 4)
    assert peak == 4 and limiter._active == 0
    peak, pops_large, limiter = _limiter_run(4000, 4)
    assert peak == 4 and limiter._active == 0
    # a waiter may be woken, lose the slot to a newcomer and queue again, but a bounded number of times
    assert pops_large <= 4 * 4000
    assert pops_large <= 5 * pops_small  # 4x the waiters: about 4x the work, not 16x


def test_async_limiter_cancelled_waiters_lose_no_wake_up():
    limiter = AsyncLimiter(lambda: 1)
    done = []

    async def one(k):
        async with limiter:
            await asyncio.sleep(0.001)
            done.append(k)

    async def main():
        tasks = [asyncio.ensure_future(one(k)) for k in range(20)]
        await asyncio.sleep(0)  # all but the first are waiting now
        for k in (1, 2, 5, 19):
            tasks[k].cancel()
        await asyncio.sleep(0.0015)  # the holder releases: it wakes waiter 1 (cancelled) -> passed on
        tasks[3].cancel()  # possibly woken and then cancelled before taking the slot
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=5)

    asyncio.run(main())
    assert sorted(done) == [k for k in range(20) if k not in (1, 2, 3, 5, 19)] or \
        sorted(done) == [k for k in range(20) if k not in (1, 2, 5, 19)]
    assert limiter._active == 0


# --------------------------------------------------------------------------- BatchHandle polling
class _CountingFuture(cf.Future):
    checks = 0

    def done(self):
        type(self).checks += 1
        return super().done()


def test_polling_a_batch_costs_O1_per_poll():
    # A worker polls its head batch every few ms while it loads: each poll must not look at all N samples.
    n, polls = 5000, 200
    futures = [_CountingFuture() for _ in range(n)]
    handle = fetchers.BatchHandle(list(range(n)), futures)
    _CountingFuture.checks = 0
    for _ in range(polls):
        assert not handle.wait(0)
    assert _CountingFuture.checks <= 3 * polls
    for k, f in enumerate(futures):
        f.set_result(k)
        if k % 50 == 0:
            handle.wait(0)
    assert handle.wait(0) and handle.done()
    assert _CountingFuture.checks <= 3 * polls + 2 * n
    assert handle.result() == list(range(n))


# --------------------------------------------------------------------------- inline mode for cheap samples
def _count_submits(fetcher, monkeypatch) -> list[int]:
    calls = [0]
    for name in ("_pool", "_io_pool", "_cpu_pool"):
        pool = getattr(fetcher, name, None)
        if pool is None:
            continue
        original = pool.submit

        def submit(*a, _original=original, **k):
            calls[0] += 1
            return _original(*a, **k)

        monkeypatch.setattr(pool, "submit", submit)
    return calls


@pytest.mark.parametrize("fetch_impl", IMPLS)
@pytest.mark.parametrize("dataset", [Trivial, TrivialFetchDecode])
def test_trivial_samples_load_inline_without_a_hand_off_per_sample(fetch_impl, dataset, monkeypatch):
    n = 4000
    with fetchers.make_fetcher(dataset(3 * n), FetchConfig(16, fetch_impl)) as f:
        assert [int(x) for x in f.submit(list(range(n))).result()] == list(range(n))  # probe, then inline
        assert f._inline
        submits = _count_submits(f, monkeypatch)
        handle = f.submit(list(range(n, 2 * n)))
        assert isinstance(handle, fetchers._DeferredBatch)
        assert [int(x) for x in handle.result()] == list(range(n, 2 * n))
        assert submits[0] == 0  # no thread, no task: the batch was loaded in this thread


@pytest.mark.parametrize("dataset,fetch_impl", [(Slow, "threaded"), (Slow, "asyncio"), (AsyncSlowFetch, "asyncio")])
def test_samples_with_latency_stay_concurrent(fetch_impl, dataset):
    with fetchers.make_fetcher(dataset(64), FetchConfig(16, fetch_impl)) as f:
        assert [int(x) for x in f.submit(list(range(32))).result()] == list(range(32))
        handle = f.submit(list(range(32, 64)))
        assert not isinstance(handle, fetchers._DeferredBatch)
        assert [int(x) for x in handle.result()] == list(range(32, 64))


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_inline_switches_back_when_samples_get_slow(fetch_impl):
    class GetsSlow(Trivial):
        slow = False

        def __getitem__(self, i):
            if self.slow:
                time.sleep(0.002)
            return torch.tensor([i])

    ds = GetsSlow(400)
    with fetchers.make_fetcher(ds, FetchConfig(16, fetch_impl)) as f:
        f.submit(list(range(100))).result()
        assert f._inline
        ds.slow = True
        for k in range(100, 400, 50):  # a few samples move the average past the exit threshold
            f.submit(list(range(k, k + 50))).result()
        assert not f._inline


@pytest.mark.parametrize("context", [None, "fork", "spawn"])
@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_large_batches_equal_torchs(fetch_impl, context):
    n = 3000
    ds = TrivialFetchDecode(2 * n + 17)
    workers = {None: 0, "fork": 2, "spawn": 1}[context]
    ours = DataLoader(ds, batch_size=n, num_workers=workers, multiprocessing_context=context, fetch_impl=fetch_impl)
    with ours:
        got = [b.reshape(-1).tolist() for b in ours]
    assert got == [b.reshape(-1).tolist() for b in torch.utils.data.DataLoader(ds, batch_size=n)]


# --------------------------------------------------------------------------- the concurrent path
class _Gate(Trivial):
    """Samples wait for a gate (so a batch is surely in flight), then cost nothing."""

    def __init__(self, n: int, bad: int | None = None) -> None:
        super().__init__(n)
        import threading

        self.gate = threading.Event()
        self.bad = bad
        self.loaded: list[int] = []

    def __getitem__(self, i: int) -> torch.Tensor:
        if not self.gate.wait(10):
            raise TimeoutError("gate")
        if i == self.bad:
            raise FileNotFoundError(f"sample-{i}")
        self.loaded.append(i)
        return torch.tensor([i])


def _concurrent(fetcher):
    fetcher._probed = True  # skip the probe: these samples must take the concurrent path
    return fetcher


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_concurrent_batch_uses_one_task_per_slot_not_per_sample(fetch_impl, monkeypatch):
    n, k = 3000, 8
    ds = _Gate(n)
    ds.gate.set()
    with _concurrent(fetchers.make_fetcher(ds, FetchConfig(k, fetch_impl))) as f:
        submits = _count_submits(f, monkeypatch)
        handle = f.submit(list(range(n)))
        assert [int(x) for x in handle.result()] == list(range(n))
        assert submits[0] <= k  # k tasks drained the batch: no future, no hand-off per sample


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_concurrent_batch_error_is_first_by_position_and_stops_new_samples(fetch_impl):
    ds = _Gate(400, bad=50)
    with _concurrent(fetchers.make_fetcher(ds, FetchConfig(4, fetch_impl))) as f:
        handle = f.submit(list(range(400)))
        ds.gate.set()
        with pytest.raises(FileNotFoundError) as info:
            handle.result()
        assert any("dataset index 50" in note for note in info.value.__notes__)
        assert len(ds.loaded) < 400 - 4  # no new sample started after the error (a few were in flight)
        assert [int(x) for x in f.submit(list(range(8))).result()] == list(range(8))  # the fetcher goes on


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_closing_mid_batch_fails_the_batch_instead_of_returning_part_of_it(fetch_impl):
    ds = _Gate(400)
    f = _concurrent(fetchers.make_fetcher(ds, FetchConfig(2, fetch_impl)))
    first = f.submit(list(range(200)))
    second = f.submit(list(range(200, 400)))  # queued behind the first: its tasks never start
    time.sleep(0.05)  # the first batch's two samples are waiting at the gate
    f.close()
    ds.gate.set()
    for handle in (first, second):
        assert handle.wait(10)
        with pytest.raises(cf.CancelledError):
            handle.result()
    assert len(ds.loaded) <= 2  # closing stopped the batch: no new sample started


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_cancelled_concurrent_batch_stops_loading(fetch_impl):
    ds = _Gate(400)
    with _concurrent(fetchers.make_fetcher(ds, FetchConfig(2, fetch_impl))) as f:
        handle = f.submit(list(range(400)))
        handle.cancel()
        ds.gate.set()
        assert handle.wait(10)
        time.sleep(0.05)
        assert len(ds.loaded) <= 2  # only the samples already waiting at the gate
