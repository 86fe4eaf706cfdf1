"""``DataLoader[T]`` is generic exactly as torch's (issue 14, item 3)."""

from typing import List, get_args, get_origin

import pytest
import torch
from torch import Tensor

import concurrent_dataloader
from concurrent_dataloader import DataLoader
from concurrent_dataloader.dataloader_mod.dataloader import DataLoader as SeedDataLoader
from concurrent_dataloader.loader.config import FETCH_IMPLS, FetchImpl
from tests.core.datasets import RangeDataset


def make_loader() -> DataLoader[List[Tensor]]:  # evaluated at definition time (no __future__ import here)
    return DataLoader(RangeDataset(6), batch_size=2)


def test_subscriptable_like_torch():
    alias = DataLoader[List[Tensor]]
    assert get_origin(alias) is DataLoader
    assert get_args(alias) == (List[Tensor],)
    assert len(DataLoader.__parameters__) == len(torch.utils.data.DataLoader.__parameters__) == 1
    assert DataLoader.__parameters__[0].__covariant__ == torch.utils.data.DataLoader.__parameters__[0].__covariant__
    assert SeedDataLoader[int] == DataLoader[int]
    assert make_loader.__annotations__["return"] == DataLoader[List[Tensor]]


@pytest.mark.parametrize("context,fetch_impl", [(None, "threaded"), ("fork", "asyncio"), ("spawn", "threaded")])
def test_a_subscripted_loader_is_an_ordinary_loader(context, fetch_impl):
    dl = DataLoader[dict](RangeDataset(6), batch_size=2, fetch_impl=fetch_impl, num_workers=1 if context else 0,
                          multiprocessing_context=context)
    assert type(dl) is DataLoader
    assert isinstance(dl, torch.utils.data.DataLoader)
    assert [b["y"].tolist() for b in dl] == [[0, 1], [2, 3], [4, 0]]


def test_user_subclass_of_a_parameterized_loader():
    class TensorLoader(DataLoader[Tensor]):
        pass

    class StillGeneric(concurrent_dataloader.DataLoader):  # like subclassing torch's without a parameter
        pass

    assert [b["y"].tolist() for b in TensorLoader(RangeDataset(4), batch_size=2, num_workers=0)] == [[0, 1], [2, 3]]
    assert get_origin(StillGeneric) is None


def test_fetch_impl_is_a_literal():
    assert get_args(FetchImpl) == FETCH_IMPLS == ("threaded", "asyncio")
