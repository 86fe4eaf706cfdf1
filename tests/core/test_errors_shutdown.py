"""Errors reach the training loop with their context; nothing hangs or leaks."""

from __future__ import annotations

import gc
import time

import pytest
import torch

from concurrent_dataloader import DataLoader
from tests.core.datasets import FailingDataset, RangeDataset, SleepyDataset, StallDataset, SuicideDataset, bad_collate
from tests.core.leakcheck import assert_no_leaks, snapshot

IMPLS = ["threaded", "asyncio"]


@pytest.mark.parametrize("fetch_impl", IMPLS)
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("where,exc_type", [("fetch", FileNotFoundError), ("decode", ValueError)])
def test_sample_error_names_index_and_key(fetch_impl, num_workers, where, exc_type):
    ds = FailingDataset(n=20, bad=7, where=where)
    with pytest.raises(exc_type) as info, DataLoader(ds, batch_size=4, num_workers=num_workers,
                                                     fetch_impl=fetch_impl) as dl:
        for _ in dl:
            pass
    text = str(info.value) + "".join(getattr(info.value, "__notes__", []))
    assert "dataset index 7" in text
    assert "s3://bucket/key-7.jpg" in text
    if num_workers:
        assert "Traceback" in text and "in DataLoader worker process" in text  # the original traceback


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_batches_before_the_error_are_delivered(fetch_impl):
    got = []
    with pytest.raises(FileNotFoundError):
        for b in DataLoader(FailingDataset(n=20, bad=9), batch_size=4, num_workers=0, fetch_impl=fetch_impl, batch_pool=4):
            got += b.tolist()
    assert got == list(range(8))


def test_worker_killed_by_signal_raises():
    before = snapshot()
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="killed by signal|exited unexpectedly"):
        for _ in DataLoader(SuicideDataset(), batch_size=2, num_workers=2):
            pass
    assert time.monotonic() - start < 60
    assert_no_leaks(before)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_collate_error(num_workers):
    with pytest.raises(RuntimeError, match="collate exploded"), \
            DataLoader(RangeDataset(8), batch_size=2, num_workers=num_workers, collate_fn=bad_collate) as dl:
        list(dl)


def test_timeout_on_stalled_fetch():
    before = snapshot()
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out"):
        list(DataLoader(StallDataset(), batch_size=2, num_workers=1, timeout=2))
    assert time.monotonic() - start < 30
    assert_no_leaks(before, timeout=20)


@pytest.mark.parametrize("fetch_impl", IMPLS)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_break_mid_epoch_leaves_nothing(fetch_impl, num_workers):
    before = snapshot()
    dl = DataLoader(SleepyDataset(n=200, batch_size=4, delay=0.01), batch_size=4, num_workers=num_workers,
                    fetch_impl=fetch_impl, num_fetch_workers=8, batch_pool=4)
    for i, _ in enumerate(dl):
        if i == 2:
            break
    del dl, _
    assert_no_leaks(before)


@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_del_loader_mid_epoch_persistent(context, fetch_impl):
    before = snapshot()
    dl = DataLoader(SleepyDataset(n=200, batch_size=4, delay=0.01), batch_size=4, num_workers=2,
                    persistent_workers=True, multiprocessing_context=context, fetch_impl=fetch_impl,
                    num_fetch_workers=8, batch_pool=3)
    it = iter(dl)
    next(it)
    next(it)
    del it, dl
    gc.collect()
    assert_no_leaks(before, timeout=20)


def test_close_is_idempotent_and_loader_reusable():
    dl = DataLoader(RangeDataset(10), batch_size=5, num_workers=0)
    assert len(list(dl)) == 2
    dl.close()
    dl.close()
    assert len(list(dl)) == 2
    dl.close()


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_sample_oserror_is_not_mistaken_for_a_dead_worker(fetch_impl):
    # A FileNotFoundError from one sample must not stop the workers: as in torch, the epoch can go on.
    with DataLoader(FailingDataset(n=20, bad=5), batch_size=4, num_workers=2, fetch_impl=fetch_impl) as dl:
        it = iter(dl)
        assert next(it).tolist() == [0, 1, 2, 3]
        start = time.monotonic()
        with pytest.raises(FileNotFoundError):
            next(it)
        assert time.monotonic() - start < 3  # no wait for a worker death that is not coming
        assert next(it).tolist() == [8, 9, 10, 11]
