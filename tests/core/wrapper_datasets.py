"""Wrapper and subclass datasets for test_wrappers.py (importable by spawned workers)."""

from __future__ import annotations

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from concurrent_dataloader import ConcurrentDataset, ConcurrentGetitems

AUG = 1000


class Plain(Dataset):
    def __init__(self, n: int = 20, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([self.offset + i])


class FetchDecode(ConcurrentDataset):
    """A fetch/decode dataset: sample i is [offset + i]."""

    def __init__(self, n: int = 20, offset: int = 0) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def fetch_raw(self, i: int) -> int:
        return self.offset + i

    def decode(self, i: int, raw: int) -> torch.Tensor:
        return torch.tensor([raw])


class BatchedGetitems(Plain):
    """Its own batched read: marks each sample so the test can tell it was used."""

    def __getitems__(self, indices: list) -> list:
        return [torch.tensor([self.offset + i + 7 * AUG]) for i in indices]


class TrainSplit(Subset):
    """The issue's example: a split with its own augmentation."""

    def __getitem__(self, i):
        return super().__getitem__(i) + AUG

    def __getitems__(self, idx):
        return [self[i] for i in idx]


class GetitemOnlySplit(Subset):
    """Overrides __getitem__ only: torch 2.14's Subset refuses to build it (NotImplementedError)."""

    def __getitem__(self, i):
        return super().__getitem__(i) + AUG


class AugmentedConcat(ConcatDataset):
    def __getitem__(self, i):
        return super().__getitem__(i) + AUG


class AugmentedFetchDecode(FetchDecode):
    """A subclass of a fetch/decode dataset that changes __getitem__: it must be called."""

    def __getitem__(self, i):
        return super().__getitem__(i) + AUG


class DecodeOverride(FetchDecode):
    """Changes decode only: the split stays (and runs the new decode)."""

    def decode(self, i, raw):
        return super().decode(i, raw) + 2 * AUG


class AugmentedConcurrentGetitems(ConcurrentGetitems):
    def __getitem__(self, i):
        return super().__getitem__(i) + AUG


def instance_getitems(indices):
    return [torch.tensor([i + 3 * AUG]) for i in indices]


class DictBatches(Dataset):
    """Its __getitems__ returns one dict per batch, not a list: torch passes it to collate_fn as is."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> int:
        return i

    def __getitems__(self, indices: list) -> dict:
        return {"idx": torch.tensor(indices)}


class Keyed(Dataset):
    """A map-style dataset indexed by string keys (a sampler yields the keys)."""

    def __init__(self) -> None:
        self.d = {f"k{i}": i for i in range(6)}

    def __len__(self) -> int:
        return 6

    def __getitem__(self, key: str) -> int:
        return self.d[key]


KEY_ORDER = ["k3", "k1", "k0", "k5", "k2", "k4"]


def identity(batch):
    return batch
