"""Concurrency is real: counted overlaps (never timings)."""

from __future__ import annotations

import pytest
import torch

from concurrent_dataloader import DataLoader, concurrent_getitems
from tests.core.datasets import SleepyDataset, SleepyFetchDecode


def peaks(batches):
    """SleepyDataset rows are (index, peak overlap, peak batches in flight, pid): max per process."""
    rows = torch.cat(list(batches))
    per_pid: dict[int, tuple[int, int]] = {}
    for i, peak, peak_batches, pid in rows.tolist():
        old = per_pid.get(pid, (0, 0))
        per_pid[pid] = (max(old[0], peak), max(old[1], peak_batches))
    return rows, per_pid


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_plain_dataset_overlap_per_worker(fetch_impl, num_workers):
    # 4 batches of 4 in flight per worker = 16 samples = num_fetch_workers.
    bs, nfw, pool = 4, 16, 4
    ds = SleepyDataset(n=bs * pool * max(1, num_workers) * 3, batch_size=bs, delay=0.2)
    rows, per_pid = peaks(DataLoader(ds, batch_size=bs, num_workers=num_workers, num_fetch_workers=nfw,
                                     batch_pool=pool, fetch_impl=fetch_impl))
    assert rows[:, 0].tolist() == list(range(len(ds)))
    assert len(per_pid) == max(1, num_workers)
    for pid, (peak, peak_batches) in per_pid.items():
        assert peak >= nfw, f"worker {pid}: only {peak} fetches overlapped"
        assert peak_batches >= pool, f"worker {pid}: only {peak_batches} batches in flight"


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_protocol_dataset_overlap_and_decode_off_loop(fetch_impl, num_workers):
    bs, nfw, pool = 4, 8, 3
    ds = SleepyFetchDecode(n=48, batch_size=bs, delay=0.05)
    rows = torch.cat(list(DataLoader(ds, batch_size=bs, num_workers=num_workers, num_fetch_workers=nfw,
                                     batch_pool=pool, fetch_impl=fetch_impl)))
    assert rows[:, 0].tolist() == list(range(48))
    assert int(rows[:, 1].max()) >= nfw          # fetches overlapped
    assert int(rows[:, 2].max()) >= 2            # samples of several batches in flight at once
    assert int(rows[:, 3].sum()) == 0            # decode never ran on the event-loop thread
    assert bool((rows[:, 4] == int(fetch_impl == "asyncio")).all())  # the async fetch path was used


@pytest.mark.parametrize("num_fetch_workers", [1, 3])
def test_concurrency_is_capped_by_num_fetch_workers(num_fetch_workers):
    ds = SleepyDataset(n=24, batch_size=8, delay=0.02)
    rows, per_pid = peaks(DataLoader(ds, batch_size=8, num_workers=0, num_fetch_workers=num_fetch_workers, batch_pool=3))
    (peak, _), = per_pid.values()
    assert peak == num_fetch_workers


def test_batch_pool_is_sent_enough_batches():
    # prefetch_factor=1 would cap a worker at one batch; batch_pool must still take effect.
    bs, pool = 2, 5
    ds = SleepyDataset(n=bs * pool * 4, batch_size=bs, delay=0.05)
    rows, per_pid = peaks(DataLoader(ds, batch_size=bs, num_workers=1, prefetch_factor=1,
                                     num_fetch_workers=bs * pool, batch_pool=pool))
    (peak, peak_batches), = per_pid.values()
    assert peak_batches == pool


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_getitems_wrapper_with_stock_torch_loader(fetch_impl):
    ds = SleepyDataset(n=32, batch_size=8, delay=0.05)
    wrapped = concurrent_getitems(ds, num_fetch_workers=8, fetch_impl=fetch_impl)
    rows = torch.cat(list(torch.utils.data.DataLoader(wrapped, batch_size=8, num_workers=2)))
    assert rows[:, 0].tolist() == list(range(32))
    assert int(rows[:, 1].max()) >= 8


class SlowDecode(SleepyFetchDecode):
    """Fetch sleeps (I/O); decode busy-waits (CPU): records both overlaps."""

    def decode(self, i, raw):
        import os
        import threading
        import time

        c = self._c()
        with c.lock:
            c.decoding = getattr(c, "decoding", 0) + 1
            c.peak_decoding = max(getattr(c, "peak_decoding", 0), c.decoding)
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass
        with c.lock:
            c.decoding -= 1
        return torch.tensor([i, c.peak, c.peak_decoding, os.getpid()])


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_decodes_are_gated_but_fetches_are_not(fetch_impl, num_workers):
    import os

    rows = torch.cat(list(DataLoader(SlowDecode(n=64, batch_size=8, delay=0.05), batch_size=8,
                                     num_workers=num_workers, num_fetch_workers=16, batch_pool=2,
                                     fetch_impl=fetch_impl)))
    assert rows[:, 0].tolist() == list(range(64))
    cores = os.cpu_count() or 1
    allowed = max(1, min(4, cores // max(1, num_workers)))
    assert int(rows[:, 2].max()) <= allowed
    assert int(rows[:, 1].max()) >= 8  # fetches still overlap


class InstantFetchBusyDecode(SleepyFetchDecode):
    """Fetch costs nothing (or sleeps ``delay``); decode burns ~2 ms of CPU; records the decoding thread."""

    def fetch_raw(self, i):
        if self.delay:
            self._sleep_counted(i)
        return (i, "sync")

    def decode(self, i, raw):
        import threading
        import time

        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass
        return torch.tensor([i, int(threading.current_thread() is threading.main_thread())])


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
@pytest.mark.parametrize("delay", [0.0, 0.02])
def test_inline_loading_only_when_fetch_is_negligible(delay, fetch_impl):
    import os

    rows = torch.cat(list(DataLoader(InstantFetchBusyDecode(n=256, batch_size=16, delay=delay), batch_size=16,
                                     num_workers=2, num_fetch_workers=8, batch_pool=2, fetch_impl=fetch_impl)))
    assert rows[:, 0].tolist() == list(range(256))
    inline = int(rows[:, 1].sum())
    one_core_each = (os.cpu_count() or 1) // 2 == 1
    if delay == 0.0 and one_core_each:
        assert inline >= 256 - 2 * 2  # all but the probe samples load in the worker's own thread
    else:
        assert inline == 0  # a real fetch latency (or spare cores) keeps the fetch threads
