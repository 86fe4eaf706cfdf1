"""Ours against torch.utils.data.DataLoader: same dataset and seeds give identical batches, in order."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler, RandomSampler, SequentialSampler

from concurrent_dataloader import DataLoader
from tests.core.datasets import RangeDataset, pair_collate


def assert_same(a, b, path="batch"):
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path}: {a} != {b}"
        assert a.dtype == b.dtype
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: len {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def run_both(dataset, **kwargs):
    ours_kwargs = dict(kwargs)
    fetch = {k: ours_kwargs.pop(k) for k in ("num_fetch_workers", "fetch_impl", "batch_pool") if k in ours_kwargs}
    gen = kwargs.get("generator")
    ref_kwargs = dict(ours_kwargs)
    if gen is not None:  # same seed, separate generator objects
        seed = gen.initial_seed()
        ours_kwargs["generator"] = torch.Generator().manual_seed(seed)
        ref_kwargs["generator"] = torch.Generator().manual_seed(seed)
    ours = list(DataLoader(dataset, **ours_kwargs, **fetch))
    ref = list(torch.utils.data.DataLoader(dataset, **ref_kwargs))
    return ours, ref


COMBOS = list(itertools.product(["threaded", "asyncio"], [0, 2], [False, True], [False, True], [1, 4, 10]))


@pytest.mark.parametrize("fetch_impl,num_workers,shuffle,drop_last,batch_size", COMBOS)
def test_identical_batches(fetch_impl, num_workers, shuffle, drop_last, batch_size):
    ds = RangeDataset(37)
    ours, ref = run_both(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                         num_workers=num_workers, generator=torch.Generator().manual_seed(1234),
                         fetch_impl=fetch_impl, num_fetch_workers=5, batch_pool=3)
    assert len(ours) == len(ref) > 0
    assert_same(ours, ref)


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_custom_collate_and_batch_sampler(fetch_impl, num_workers):
    ds = RangeDataset(41)
    sampler = BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(7)), batch_size=6, drop_last=False)
    ours = list(DataLoader(ds, batch_sampler=sampler, collate_fn=pair_collate, num_workers=num_workers,
                           fetch_impl=fetch_impl, num_fetch_workers=4, batch_pool=2))
    sampler_ref = BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(7)), batch_size=6, drop_last=False)
    ref = list(torch.utils.data.DataLoader(ds, batch_sampler=sampler_ref, collate_fn=pair_collate, num_workers=num_workers))
    assert_same(ours, ref)
    # Every sampled index exactly once, and it is the *sampled* index that was loaded.
    flat = [i for ids, _ in ours for i in ids]
    assert sorted(flat) == list(range(41))
    sampled = [i for b in BatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(7)), 6, False) for i in b]
    assert flat == sampled


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_no_auto_collation(fetch_impl):
    ds = RangeDataset(9)
    ours, ref = run_both(ds, batch_size=None, num_workers=2, fetch_impl=fetch_impl)
    assert_same(ours, ref)


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_distributed_sampler(fetch_impl):
    ds = RangeDataset(50)
    seen = []
    for rank in range(3):
        ours, ref = run_both(ds, batch_size=4, num_workers=2, fetch_impl=fetch_impl,
                             sampler=DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=True, seed=3))
        assert_same(ours, ref)
        seen += [int(i) for b in ours for i in b["x"][:, 0]]
    assert set(seen) == set(range(50))


def test_subset_is_loaded_by_sampled_index():
    ds = torch.utils.data.Subset(RangeDataset(30), list(range(29, -1, -3)))
    ours, ref = run_both(ds, batch_size=3, num_workers=0, num_fetch_workers=4)
    assert_same(ours, ref)


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_multiple_epochs_reshuffle_like_torch(fetch_impl):
    ds = RangeDataset(20)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ours_dl = DataLoader(ds, batch_size=4, shuffle=True, generator=g1, num_workers=2, persistent_workers=True,
                         fetch_impl=fetch_impl)
    ref_dl = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, generator=g2, num_workers=2,
                                         persistent_workers=True)
    for _ in range(3):
        assert_same(list(ours_dl), list(ref_dl))
    ours_dl.close()
