"""An iterator owns what it needs (issue 14, item 1): dropping the loader never ends an epoch early.

Persistent workers stop when both the loader and every iterator using them are gone, or on
``close()``; an iterator whose workers were stopped while it still owed batches raises
:class:`WorkersStoppedError` instead of ending the epoch quietly.
"""

from __future__ import annotations

import gc
import time

import psutil
import pytest
import torch

from concurrent_dataloader import DataLoader, WorkersStoppedError
from tests.core.datasets import RangeDataset
from tests.core.leakcheck import assert_no_leaks, snapshot

IMPLS = ["threaded", "asyncio"]
N, BS = 22, 4
EXPECTED = [list(range(i, min(i + BS, N))) for i in range(0, N, BS)]


def impl_and_context(spawn_impl: str) -> list:
    """Both fetch_impls with fork; with spawn (seconds per worker: it imports torch) only
    ``spawn_impl`` runs by default, the other under ``-m slow``."""
    return [pytest.param(impl, ctx, marks=[pytest.mark.slow] if ctx == "spawn" and impl != spawn_impl else [])
            for impl in IMPLS for ctx in ("fork", "spawn")]


def ids(batches) -> list[list[int]]:
    return [b["x"][:, 0].tolist() for b in batches]


def make(fetch_impl, num_workers=2, context=None, persistent=True, n=N, **kw) -> DataLoader:
    if context == "spawn":
        num_workers = min(num_workers, 1)  # a spawned worker imports torch: seconds on a busy machine
    return DataLoader(RangeDataset(n), batch_size=BS, num_workers=num_workers, fetch_impl=fetch_impl,
                      persistent_workers=persistent and num_workers > 0, multiprocessing_context=context,
                      num_fetch_workers=4, batch_pool=2, **kw)


def baseline() -> dict:
    # multiprocessing's shared-memory heap (telemetry counters) keeps its arena for the life of
    # the process: allocate it before the baseline.
    list(DataLoader(RangeDataset(4), batch_size=2, num_workers=1))
    return snapshot()


def _children() -> int:
    return len(psutil.Process().children(recursive=True))


@pytest.mark.parametrize("fetch_impl,context", impl_and_context("threaded"))
def test_dropped_loader_keeps_iterator_working(fetch_impl, context):
    before = baseline()
    it = iter(make(fetch_impl, context=context))
    gc.collect()  # the loader is gone now
    assert ids(it) == EXPECTED
    del it
    assert_no_leaks(before, timeout=20)


@pytest.mark.parametrize("fetch_impl", IMPLS)
@pytest.mark.parametrize("num_workers,persistent", [(0, False), (2, False), (2, True)])
def test_enumerate_iter_of_a_temporary_loader(fetch_impl, num_workers, persistent):
    got = []
    for i, batch in enumerate(iter(make(fetch_impl, num_workers, persistent=persistent))):
        if i == 0:
            gc.collect()  # the loader is garbage from the start: collect it once, mid-epoch
        got.append((i, batch["x"][:, 0].tolist()))
    assert got == list(enumerate(EXPECTED))


@pytest.mark.parametrize("fetch_impl,context", impl_and_context("asyncio"))
def test_two_interleaved_iterators_of_dropped_loaders(fetch_impl, context):
    a = iter(make(fetch_impl, context=context))
    b = iter(make(fetch_impl, context=context, n=2 * N))
    gc.collect()
    got_a, got_b = [], []
    for _ in range(len(EXPECTED)):
        got_a += ids([next(a)])
        got_b += ids([next(b)])
        gc.collect()
    got_b += ids(b)
    with pytest.raises(StopIteration):
        next(a)
    assert got_a == EXPECTED
    assert got_b == [list(range(i, min(i + BS, 2 * N))) for i in range(0, 2 * N, BS)]


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_held_iterator_keeps_workers_until_it_is_gone(fetch_impl):
    before = baseline()
    dl = make(fetch_impl)
    it = iter(dl)
    first = next(it)
    del dl
    gc.collect()
    assert _children() == before["children"] + 2  # the iterator still owns its workers
    assert ids([first] + list(it)) == EXPECTED
    assert _children() == before["children"] + 2  # persistent: they wait for the next epoch
    del it, first
    assert_no_leaks(before, timeout=20)  # loader and iterator gone: workers stop


@pytest.mark.parametrize("fetch_impl,context", impl_and_context("asyncio"))
def test_close_mid_epoch_raises_then_a_later_epoch_works(fetch_impl, context):
    before = baseline()
    dl = make(fetch_impl, context=context)
    it = iter(dl)
    assert ids([next(it)]) == EXPECTED[:1]
    dl.close()
    with pytest.raises(WorkersStoppedError, match="still owed batches"):
        next(it)
    with pytest.raises(WorkersStoppedError):  # and again: never a quiet StopIteration
        next(it)
    assert isinstance(WorkersStoppedError("x"), RuntimeError)
    for _ in range(2):  # later epochs start fresh (persistent) workers
        assert ids(dl) == EXPECTED
    it2 = iter(dl)  # an epoch whose loader is then dropped
    del dl, it
    gc.collect()
    assert ids(it2) == EXPECTED
    del it2
    assert_no_leaks(before, timeout=20)


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_close_after_the_epoch_ended_is_not_an_error(fetch_impl):
    dl = make(fetch_impl, persistent=False)
    it = iter(dl)
    assert ids(it) == EXPECTED
    dl.close()
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_close_mid_epoch_main_process(fetch_impl):
    dl = make(fetch_impl, num_workers=0)
    it = iter(dl)
    next(it)
    dl.close()
    with pytest.raises(WorkersStoppedError):
        next(it)
    assert ids(dl) == EXPECTED  # a new epoch gets new fetch threads


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_loader_restarting_workers_fails_the_old_iterator_loudly(fetch_impl):
    # A persistent loader whose iterator was stopped (here by close()) starts fresh workers on the
    # next iter(); an old iterator still in use must not quietly end its epoch.
    dl = make(fetch_impl)
    old = iter(dl)
    next(old)
    dl.close()
    new = iter(dl)
    assert new is not old
    assert ids(new) == EXPECTED
    with pytest.raises(WorkersStoppedError):
        next(old)
    dl.close()


def test_later_epochs_reuse_persistent_workers():
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    others = {p.pid for p in psutil.Process().children()}
    dl = make("threaded")
    first = list(dl)
    pids = {p.pid for p in psutil.Process().children()} - others
    assert len(pids) == 2
    second = list(dl)
    assert ids(first) == ids(second) == EXPECTED
    assert {p.pid for p in psutil.Process().children()} - others == pids
    dl.close()
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
        assert time.monotonic() < deadline, "close() left persistent workers running"
        time.sleep(0.05)


def test_stock_torch_behaves_the_same_on_a_dropped_loader():
    # The reference behaviour the tests above hold us to.
    it = iter(torch.utils.data.DataLoader(RangeDataset(N), batch_size=BS, num_workers=2, persistent_workers=True))
    gc.collect()
    assert ids(it) == EXPECTED
