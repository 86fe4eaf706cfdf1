"""Wrappers are seen through only when that cannot change a sample (issue 14, item 2).

Only the exact ``Subset`` / ``ConcatDataset`` / ``ConcurrentGetitems`` class, with nothing
overridden, is looked through; anything else has its own ``__getitem__``/``__getitems__``
called, exactly where torch's DataLoader calls them. Every case is compared with torch.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import ConcatDataset, Subset

from concurrent_dataloader import DataLoader, SkipErrors
from concurrent_dataloader.loader.protocol import is_fetch_decode
from concurrent_dataloader.loader.wrappers import batched_getitems, resolve
from tests.core.wrapper_datasets import (AUG, AugmentedConcat, AugmentedConcurrentGetitems, AugmentedFetchDecode, BatchedGetitems,
                              DecodeOverride, FetchDecode, GetitemOnlySplit, Plain, TrainSplit, instance_getitems)

IMPLS = ["threaded", "asyncio"]
IDX = [3, 1, 4, 15, 9, 2, 6, 5, 8, 7]


def _instance_override():
    s = Subset(Plain(20), IDX)
    s.__getitems__ = instance_getitems  # torch's fetcher calls an instance attribute too
    return s


CASES = {
    "train_split": lambda: TrainSplit(Plain(20), IDX),
    "train_split_fd": lambda: TrainSplit(FetchDecode(20), IDX),
    "plain_subset_fd": lambda: Subset(FetchDecode(20), IDX),
    "subset_of_train_split": lambda: Subset(TrainSplit(Plain(20), IDX), [9, 0, 5, 2]),
    "subset_of_batched": lambda: Subset(BatchedGetitems(20), IDX),
    "subset_instance_getitems": _instance_override,
    "concat_fd": lambda: ConcatDataset([FetchDecode(5), FetchDecode(7, offset=100)]),
    "augmented_concat": lambda: AugmentedConcat([FetchDecode(5), Plain(7, offset=100)]),
    "augmented_fetch_decode": lambda: AugmentedFetchDecode(12),
    "subset_of_augmented_fd": lambda: Subset(AugmentedFetchDecode(20), IDX),
    "decode_override": lambda: DecodeOverride(12),
    "skip_errors_of_augmented": lambda: SkipErrors(AugmentedFetchDecode(12)),
    "augmented_concurrent_getitems": lambda: AugmentedConcurrentGetitems(FetchDecode(12)),
}


def flat(batches) -> list[int]:
    return torch.cat([b.reshape(-1) for b in batches]).tolist()


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("fetch_impl", IMPLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_samples_as_torch(case, fetch_impl, num_workers):
    ds = CASES[case]()
    expected = flat(torch.utils.data.DataLoader(ds, batch_size=4))
    with DataLoader(ds, batch_size=4, num_workers=num_workers, fetch_impl=fetch_impl, num_fetch_workers=4) as dl:
        assert flat(dl) == expected


@pytest.mark.parametrize("fetch_impl", IMPLS)
def test_train_split_augmentation_runs_under_spawn(fetch_impl):
    ds = TrainSplit(FetchDecode(20), IDX)
    with DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context="spawn", fetch_impl=fetch_impl) as dl:
        assert flat(dl) == [i + AUG for i in IDX]


def test_torch_refuses_a_subset_that_overrides_only_getitem():
    # torch 2.14 makes this split impossible to build, so no loader can skip its __getitem__.
    with pytest.raises(NotImplementedError):
        GetitemOnlySplit(FetchDecode(20), IDX)


def test_the_issue_example_gets_its_augmentation():
    got = flat(DataLoader(TrainSplit(Plain(20), IDX), batch_size=4, num_workers=0))
    assert got == [i + AUG for i in IDX]


def test_only_exact_plain_wrappers_are_seen_through():
    inner = FetchDecode(20)
    assert resolve(Subset(inner, IDX), 2) == (inner, 4)
    assert resolve(Subset(Subset(inner, IDX), [1, 0]), 0) == (inner, 1)
    concat = ConcatDataset([FetchDecode(5), inner])
    assert resolve(concat, 6) == (inner, 1)
    assert resolve(concat, -1) == (inner, 19)
    for ds in (TrainSplit(inner, IDX), AugmentedConcat([inner]), _instance_override()):
        assert resolve(ds, 0) == (ds, 0)


def test_fetch_decode_split_only_without_a_getitem_override_below_it():
    assert is_fetch_decode(FetchDecode())
    assert is_fetch_decode(DecodeOverride())          # decode changed: the split runs it
    assert not is_fetch_decode(AugmentedFetchDecode())  # __getitem__ changed: call it
    fd = FetchDecode()
    fd.__getitems__ = instance_getitems
    assert not is_fetch_decode(fd)


def test_batched_getitems_is_the_users_method_where_torch_calls_it():
    assert batched_getitems(Subset(FetchDecode(), IDX)) is None           # per sample, with the split
    assert batched_getitems(Subset(Plain(), IDX)) is None                 # Subset.__getitems__ = per sample
    split = TrainSplit(Plain(), IDX)
    assert batched_getitems(split) == split.__getitems__
    sub = Subset(BatchedGetitems(), IDX)
    assert batched_getitems(sub) == sub.__getitems__                      # forwards to the inner batch read
    assert batched_getitems(_instance_override()) is instance_getitems
