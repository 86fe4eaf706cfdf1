"""Datasets for the core loader tests. In their own module so spawn/forkserver workers can import them."""

from __future__ import annotations

import os
import signal
import threading
import time

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from concurrent_dataloader import ConcurrentDataset


class RangeDataset(Dataset):
    """Sample i is a small tensor that identifies i (plus a dict, to exercise collate)."""

    def __init__(self, n: int = 37) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return {"x": torch.tensor([i, i * 2], dtype=torch.int64), "y": i % 5}


class OverlapCounter:
    """Per-process count of fetches that run at the same time, and of distinct batches among them."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.lock = threading.Lock()
        self.active: dict[int, int] = {}
        self.peak = 0
        self.peak_batches = 0

    def enter(self, i: int) -> None:
        with self.lock:
            self.active[i] = i // self.batch_size
            self.peak = max(self.peak, len(self.active))
            self.peak_batches = max(self.peak_batches, len(set(self.active.values())))

    def leave(self, i: int) -> None:
        with self.lock:
            del self.active[i]


class _PerProcessCounter:
    """An OverlapCounter per process (a forked/spawned worker starts its own)."""

    def __init__(self, n: int, batch_size: int, delay: float = 0.05) -> None:
        self.n, self.batch_size, self.delay = n, batch_size, delay
        self._counter: OverlapCounter | None = None
        self._pid = None

    def _c(self) -> OverlapCounter:
        if self._pid != os.getpid():
            self._counter, self._pid = OverlapCounter(self.batch_size), os.getpid()
        return self._counter

    def __getstate__(self):
        return {"n": self.n, "batch_size": self.batch_size, "delay": self.delay, "_counter": None, "_pid": None}

    def __len__(self) -> int:
        return self.n

    def _sleep_counted(self, i: int) -> OverlapCounter:
        c = self._c()
        c.enter(i)
        try:
            time.sleep(self.delay)
        finally:
            c.leave(i)
        return c


class SleepyDataset(_PerProcessCounter, Dataset):
    """A plain dataset (no fetch/decode protocol) whose __getitem__ sleeps; reports overlap peaks."""

    def __getitem__(self, i: int):
        c = self._sleep_counted(i)
        return torch.tensor([i, c.peak, c.peak_batches, os.getpid()])


class SleepyFetchDecode(_PerProcessCounter, ConcurrentDataset):
    """Protocol dataset: fetch sleeps (sync) or awaits (async); decode records its thread."""

    def fetch_raw(self, i: int):
        self._sleep_counted(i)
        return (i, "sync")

    async def fetch_raw_async(self, i: int):
        import asyncio

        c = self._c()
        c.enter(i)
        try:
            await asyncio.sleep(self.delay)
        finally:
            c.leave(i)
        return (i, "async")

    def decode(self, i: int, raw):
        j, path = raw
        assert j == i
        c = self._c()
        on_loop = threading.current_thread().name.startswith("cdl-event-loop")
        return torch.tensor([i, c.peak, c.peak_batches, int(on_loop), int(path == "async")])


class FailingDataset(ConcurrentDataset):
    """Fetching index ``bad`` raises FileNotFoundError; describe() names a fake key."""

    def __init__(self, n: int = 20, bad: int = 7, where: str = "fetch") -> None:
        self.n, self.bad, self.where = n, bad, where

    def __len__(self) -> int:
        return self.n

    def describe(self, i: int) -> str:
        return f"s3://bucket/key-{i}.jpg"

    def fetch_raw(self, i: int):
        if self.where == "fetch" and i == self.bad:
            raise FileNotFoundError(f"no such object key-{i}.jpg")
        return i

    def decode(self, i: int, raw):
        if self.where == "decode" and i == self.bad:
            raise ValueError("cannot identify image file")
        return torch.tensor(raw)


class SuicideDataset(Dataset):
    """Index ``bad`` kills its own worker process with SIGKILL."""

    def __init__(self, n: int = 40, bad: int = 13) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if i == self.bad and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.01)
        return i


class WorkerInfoDataset(Dataset):
    """Returns (index, worker id, num_workers, value set by worker_init_fn)."""

    def __init__(self, n: int = 24) -> None:
        self.n = n
        self.init_value = -1

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        info = get_worker_info()
        wid = -1 if info is None else info.id
        nw = 0 if info is None else info.num_workers
        same = int(info is None or info.dataset is self)
        return torch.tensor([i, wid, nw, self.init_value, same])


def set_init_value(worker_id: int) -> None:
    info = get_worker_info()
    info.dataset.init_value = 100 + worker_id


class CountingIterable(IterableDataset):
    """Shards by worker id, as torch's docs show."""

    def __init__(self, n: int = 23) -> None:
        self.n = n

    def __iter__(self):
        info = get_worker_info()
        if info is None:
            return iter(range(self.n))
        return iter(range(info.id, self.n, info.num_workers))


class StallDataset(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        time.sleep(30)
        return i


def bad_collate(batch):
    raise RuntimeError("collate exploded")


def pair_collate(batch):
    """A custom collate that keeps a python structure (not default_collate)."""
    return [int(s["x"][0]) for s in batch], torch.stack([s["x"] for s in batch])


class MarkedStall(ConcurrentDataset):
    """Every sample stalls for a minute (a hung store) after leaving ``<marker_dir>/started-<pid>``:
    the async fetch awaits (the event loop is busy), the sync fetch sleeps (a fetch thread)."""

    def __init__(self, marker_dir: str, n: int = 64) -> None:
        self.marker_dir, self.n = marker_dir, n

    def __len__(self) -> int:
        return self.n

    def _mark(self) -> None:
        with open(os.path.join(self.marker_dir, f"started-{os.getpid()}"), "w"):
            pass

    def fetch_raw(self, i: int):
        self._mark()
        time.sleep(60)
        return i

    async def fetch_raw_async(self, i: int):
        import asyncio

        self._mark()
        await asyncio.sleep(60)
        return i

    def decode(self, i: int, raw):
        return torch.tensor([raw])


class PlainMarkedStall(MarkedStall):
    """The same stall behind a plain ``__getitem__`` (no fetch/decode split)."""

    fetch_raw_async = None  # type: ignore[assignment]  # not the protocol: loaded by __getitem__

    def __getitem__(self, i: int):
        return self.decode(i, self.fetch_raw(i))
