"""Behaviours of torch's DataLoader that a swapped-in import must keep (found by probing; issue 14).

Each case runs stock torch and ours on the same input and compares what training would see.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from concurrent_dataloader import DataLoader
from tests.core.wrapper_datasets import KEY_ORDER, BatchedGetitems, DictBatches, Keyed, identity

IMPLS = ["threaded", "asyncio"]

CASES = {
    # batch_size=None: torch loads dataset[index], never __getitems__ (it would add 7000 here)
    "no_auto_collation_with_getitems": lambda L, kw: L(BatchedGetitems(10), batch_size=None, **kw),
    # __getitems__ may return any object; torch hands it to collate_fn unchanged
    "getitems_returns_a_dict": lambda L, kw: L(DictBatches(), batch_size=4, collate_fn=identity, **kw),
    "string_keys": lambda L, kw: L(Keyed(), batch_size=2, sampler=KEY_ORDER, **kw),
    "string_keys_no_batching": lambda L, kw: L(Keyed(), batch_size=None, sampler=KEY_ORDER, **kw),
    "tensor_as_dataset": lambda L, kw: L(torch.arange(10), batch_size=4, **kw),
    "numpy_as_dataset": lambda L, kw: L(np.arange(10), batch_size=4, **kw),
    "list_sampler_with_repeats": lambda L, kw: L(BatchedGetitems(10), batch_size=3, sampler=[9, 0, 4, 4, 2], **kw),
    "empty_dataset": lambda L, kw: L([], batch_size=3, **kw),
    "stack_dataset": lambda L, kw: L(torch.utils.data.StackDataset(torch.arange(5), torch.arange(5) * 2),
                                     batch_size=2, **kw),
}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("fetch_impl", IMPLS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_as_torch(case, fetch_impl, num_workers):
    make = CASES[case]
    expected = list(make(torch.utils.data.DataLoader, {"num_workers": num_workers}))
    with make(DataLoader, {"num_workers": num_workers, "fetch_impl": fetch_impl}) as dl:
        got = list(dl)
    assert repr(got) == repr(expected)


@pytest.mark.parametrize("fetch_impl,case", [("threaded", "no_auto_collation_with_getitems"),
                                             ("asyncio", "getitems_returns_a_dict")])
def test_same_as_torch_under_spawn(fetch_impl, case):
    make = CASES[case]
    expected = list(make(torch.utils.data.DataLoader, {}))
    with make(DataLoader, {"num_workers": 1, "fetch_impl": fetch_impl, "multiprocessing_context": "spawn"}) as dl:
        assert repr(list(dl)) == repr(expected)
