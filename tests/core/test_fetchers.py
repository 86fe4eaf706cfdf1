"""The per-process engines directly: ordering, errors by position, fallbacks, wrappers."""

from __future__ import annotations

import pickle
import sys
import warnings

import pytest
import torch

from concurrent_dataloader import ConcurrentGetitems, DataLoader, FetchConfig, concurrent_getitems
from concurrent_dataloader.loader import fetchers
from core_datasets import FailingDataset, RangeDataset, SleepyDataset


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
