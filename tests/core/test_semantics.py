"""Torch semantics a training script relies on, unchanged."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from concurrent_dataloader import DataLoader
from tests.core.datasets import CountingIterable, RangeDataset, WorkerInfoDataset, set_init_value
from tests.core.test_differential import assert_same


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_worker_info_and_init_fn(fetch_impl):
    ds = WorkerInfoDataset(24)
    rows = torch.cat(list(DataLoader(ds, batch_size=4, num_workers=2, worker_init_fn=set_init_value,
                                     fetch_impl=fetch_impl)))
    assert rows[:, 0].tolist() == list(range(24))
    assert set(rows[:, 1].tolist()) == {0, 1}
    assert set(rows[:, 2].tolist()) == {2}
    # worker_init_fn ran in each worker, and get_worker_info().dataset is the user's dataset
    assert all(r[3] == 100 + r[1] for r in rows.tolist())
    assert set(rows[:, 4].tolist()) == {1}


# fork with both fetch_impls; spawn and forkserver (seconds: each worker imports torch) with one
# fetch_impl each by default, the other under ``-m slow``.
@pytest.mark.parametrize("context,fetch_impl", [
    pytest.param(ctx, impl, marks=[pytest.mark.slow] if (ctx, impl) in {("spawn", "asyncio"), ("forkserver", "threaded")}
                 else [])
    for ctx in ("fork", "spawn", "forkserver") for impl in ("threaded", "asyncio")])
def test_start_methods_with_persistent_workers_and_pin_memory(context, fetch_impl):
    ds = RangeDataset(30)
    dl = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=context, persistent_workers=True,
                    pin_memory=True, shuffle=True, generator=torch.Generator().manual_seed(9),
                    fetch_impl=fetch_impl, num_fetch_workers=4, batch_pool=2)
    ref = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context=context,
                                      persistent_workers=True, shuffle=True, generator=torch.Generator().manual_seed(9))
    try:
        for _ in range(2):
            assert_same(list(dl), list(ref))
    finally:
        dl.close()
        ref._iterator._shutdown_workers()


def test_multiprocessing_context_object():
    ds = RangeDataset(10)
    out = list(DataLoader(ds, batch_size=3, num_workers=2, multiprocessing_context=mp.get_context("spawn")))
    assert_same(out, list(torch.utils.data.DataLoader(ds, batch_size=3)))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterable_dataset_behaves_as_torch(num_workers):
    ds = CountingIterable(23)
    ours = list(DataLoader(ds, batch_size=4, num_workers=num_workers))
    ref = list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=num_workers))
    assert_same(ours, ref)


def test_in_order_false_delivers_everything_once():
    ds = RangeDataset(40)
    out = list(DataLoader(ds, batch_size=3, num_workers=2, in_order=False, batch_pool=3))
    got = sorted(int(i) for b in out for i in b["x"][:, 0])
    assert got == list(range(40))


def test_timeout_and_prefetch_factor_accepted():
    ds = RangeDataset(12)
    out = list(DataLoader(ds, batch_size=5, num_workers=2, timeout=30, prefetch_factor=4))
    assert_same(out, list(torch.utils.data.DataLoader(ds, batch_size=5)))


def test_len_and_attributes_unchanged():
    ds = RangeDataset(10)
    dl = DataLoader(ds, batch_size=3, drop_last=True, num_fetch_workers=7, fetch_impl="asyncio", batch_pool=5)
    assert len(dl) == 3
    assert (dl.num_fetch_workers, dl.fetch_impl, dl.batch_pool) == (7, "asyncio", 5)
    assert isinstance(dl, torch.utils.data.DataLoader)
    assert dl.prefetch_factor is None  # the user's setting is not mutated


@pytest.mark.parametrize("kwargs,exc,words", [
    ({"num_fetch_workers": 0}, ValueError, ["num_fetch_workers", "0"]),
    ({"num_fetch_workers": 2.5}, TypeError, ["num_fetch_workers", "2.5"]),
    ({"batch_pool": 0}, ValueError, ["batch_pool", "0"]),
    ({"batch_pool": "3"}, TypeError, ["batch_pool", "'3'"]),
    ({"fetch_impl": "threads"}, ValueError, ["fetch_impl", "'threads'"]),
    ({"fetch_impl": None}, ValueError, ["fetch_impl", "None"]),
])
def test_bad_arguments(kwargs, exc, words):
    with pytest.raises(exc) as info:
        DataLoader(RangeDataset(4), **kwargs)
    for w in words:
        assert w in str(info.value)
