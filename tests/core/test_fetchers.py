"""The per-process engines directly: ordering, errors by position, fallbacks, wrappers."""

from __future__ import annotations

import pickle
import sys
import warnings

import pytest
import torch

from concurrent_dataloader import ConcurrentGetitems, DataLoader, FetchConfig, concurrent_getitems
from concurrent_dataloader.loader import fetchers
from concurrent_dataloader import ConcurrentDataset
from tests.core.datasets import FailingDataset, RangeDataset, SleepyDataset


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_results_in_index_order_and_first_error_by_position(fetch_impl):
    with fetchers.make_fetcher(FailingDataset(n=10, bad=3), FetchConfig(4, fetch_impl)) as f:
        assert [int(x) for x in f.submit([5, 1, 9, 0]).result()] == [5, 1, 9, 0]
        with pytest.raises(FileNotFoundError) as info:
            f.submit([0, 3, 4]).result()
        assert any("dataset index 3" in n for n in info.value.__notes__)
        # the engine keeps working after a failed sample
        assert [int(x) for x in f.submit([2]).result()] == [2]


def test_closed_fetcher_refuses_work():
    f = fetchers.make_fetcher(RangeDataset(3), FetchConfig(2, "asyncio"))
    f.close()
    f.close()
    with pytest.raises(RuntimeError, match="closed"):
        f.submit([0])


def test_plain_asyncio_fallback_warns_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    monkeypatch.setattr(fetchers, "_uvloop_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with fetchers.make_fetcher(RangeDataset(3), FetchConfig(2, "asyncio")) as f:
                assert len(f.submit([0, 1, 2]).result()) == 3
    assert [str(w.message) for w in caught if "uvloop" in str(w.message)] == [
        "uvloop is not installed; fetch_impl='asyncio' falls back to the stdlib event loop"]


def test_uvloop_is_used_when_installed():
    uvloop = pytest.importorskip("uvloop")
    loop = fetchers.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_getitems_wrapper_pickles_without_its_engine():
    wrapped = concurrent_getitems(RangeDataset(8), num_fetch_workers=3)
    assert len(wrapped.__getitems__([1, 2])) == 2
    clone = pickle.loads(pickle.dumps(wrapped))
    assert "_cdl_fetcher_state" not in clone.__dict__
    assert [int(s["x"][0]) for s in clone.__getitems__([4, 0])] == [4, 0]
    wrapped.close_getitems()
    clone.close_getitems()


def test_getitems_wrapper_validates_arguments():
    with pytest.raises(ValueError, match="fetch_impl"):
        ConcurrentGetitems(RangeDataset(2), fetch_impl="bogus")


def test_our_loader_loads_getitems_dataset_per_sample():
    # Our DataLoader must not nest engines through a wrapper's __getitems__.
    ds = concurrent_getitems(SleepyDataset(n=16, batch_size=8, delay=0.03), num_fetch_workers=2)
    rows = torch.cat(list(DataLoader(ds, batch_size=8, num_workers=0, num_fetch_workers=8)))
    assert int(rows[:, 1].max()) >= 8


def test_subset_is_fetched_per_sample():
    ds = torch.utils.data.Subset(SleepyDataset(n=40, batch_size=8, delay=0.03), list(range(0, 40, 2)))
    rows = torch.cat(list(DataLoader(ds, batch_size=8, num_workers=0, num_fetch_workers=8)))
    assert rows[:, 0].tolist() == list(range(0, 40, 2))
    assert int(rows[:, 1].max()) >= 8


def test_dataset_with_its_own_getitems_is_called_per_batch():
    class Batched(torch.utils.data.Dataset):
        calls: list = []

        def __len__(self):
            return 10

        def __getitem__(self, i):
            raise AssertionError("__getitem__ should not be used")

        def __getitems__(self, indices):
            self.calls.append(list(indices))
            return [torch.tensor(i) for i in indices]

    ds = Batched()
    out = torch.cat(list(DataLoader(ds, batch_size=4, num_workers=0, fetch_impl="asyncio")))
    assert out.tolist() == list(range(10))
    assert ds.calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_pin_memory_single_process():
    out = list(DataLoader(RangeDataset(6), batch_size=3, num_workers=0, pin_memory=True))
    assert len(out) == 2


class _CountedFetchDecode(ConcurrentDataset):
    """Fetch sleeps ``delay`` (0: free); decode burns ~2 ms. Records, per index, how many fetches
    were running when its fetch started, and how many samples were decoded so far."""

    def __init__(self, n: int = 64, delay: float = 0.0, bad: int | None = None) -> None:
        import threading

        self.n, self.delay, self.bad = n, delay, bad
        self.lock = threading.Lock()
        self.active = 0
        self.running_at_start: dict[int, int] = {}
        self.decoded = 0

    def __len__(self) -> int:
        return self.n

    def _enter(self, i: int) -> None:
        with self.lock:
            self.active += 1
            self.running_at_start[i] = self.active

    def _leave(self) -> None:
        with self.lock:
            self.active -= 1

    def fetch_raw(self, i: int):
        import time

        self._enter(i)
        try:
            if self.delay:
                time.sleep(self.delay)
        finally:
            self._leave()
        if i == self.bad:
            raise FileNotFoundError(f"no such object: sample-{i}")
        return i

    async def fetch_raw_async(self, i: int):
        import asyncio

        self._enter(i)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self._leave()
        if i == self.bad:
            raise FileNotFoundError(f"no such object: sample-{i}")
        return i

    def decode(self, i: int, raw):
        import time

        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass
        with self.lock:
            self.decoded += 1
        return raw


@pytest.fixture
def one_core_share(monkeypatch):
    """The process has one core's share (as each of 2 workers on 2 cores): inline mode is allowed."""
    monkeypatch.setattr(fetchers, "decode_concurrency", lambda: 1)


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_probe_loads_the_first_samples_alone(one_core_share, fetch_impl):
    ds = _CountedFetchDecode(n=64, delay=0.02)
    with fetchers.make_fetcher(ds, FetchConfig(16, fetch_impl)) as f:
        first = f.submit(list(range(16)))
        assert first.result() == list(range(16))
        assert [ds.running_at_start[i] for i in range(f.PROBE_SAMPLES)] == [1] * f.PROBE_SAMPLES
        # a 20 ms fetch is not negligible next to a 2 ms decode: the rest runs concurrently
        assert max(ds.running_at_start[i] for i in range(16)) >= 8
        assert f.submit(list(range(16, 32))).result() == list(range(16, 32))
        assert max(ds.running_at_start[i] for i in range(16, 32)) >= 8


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_inline_batches_load_on_demand_in_order(one_core_share, fetch_impl):
    ds = _CountedFetchDecode(n=64, delay=0.0)
    with fetchers.make_fetcher(ds, FetchConfig(16, fetch_impl)) as f:
        handles = [f.submit(list(range(k, k + 8))) for k in range(0, 32, 8)]
        # free fetches: after the probe nothing is loaded until a batch is asked for
        assert ds.decoded == f.PROBE_SAMPLES
        assert not handles[1].done()
        assert handles[0].result() == list(range(8))
        assert ds.decoded == 8
        handles[1].cancel()  # a stale batch (e.g. a resumed epoch) is never loaded
        assert handles[2].wait(None) and handles[2].done()
        assert ds.decoded == 16
        assert handles[3].result() == list(range(24, 32))
        assert ds.decoded == 24
        assert handles[1].wait(0) and ds.decoded == 24


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_inline_batch_errors_keep_their_context(one_core_share, fetch_impl):
    ds = _CountedFetchDecode(n=64, delay=0.0, bad=13)
    with fetchers.make_fetcher(ds, FetchConfig(16, fetch_impl)) as f:
        assert f.submit(list(range(8))).result() == list(range(8))
        with pytest.raises(FileNotFoundError) as info:
            f.submit(list(range(8, 16))).result()
        assert any("dataset index 13" in n for n in info.value.__notes__)
        assert f.submit(list(range(16, 24))).result() == list(range(16, 24))


def test_no_inline_mode_with_spare_cores(monkeypatch):
    monkeypatch.setattr(fetchers, "decode_concurrency", lambda: 2)  # e.g. one worker on 2 cores
    ds = _CountedFetchDecode(n=64, delay=0.0)
    with fetchers.make_fetcher(ds, FetchConfig(16, "threaded")) as f:
        handles = [f.submit(list(range(k, k + 8))) for k in range(0, 32, 8)]
        for h in handles:
            h.wait(None)
        assert ds.decoded == 32  # every batch started at submit: decodes can use both cores
