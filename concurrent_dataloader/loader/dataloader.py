"""``concurrent_dataloader.DataLoader``: torch's DataLoader with concurrent fetching per worker."""

from __future__ import annotations

import weakref
from typing import Any

import torch.utils.data

from . import _torch_compat
from .config import FetchConfig
from .fetchers import SampleFetcher, make_fetcher
from .worker import _worker_loop

__all__ = ["DataLoader"]


class DataLoader(torch.utils.data.DataLoader):
    """A drop-in ``torch.utils.data.DataLoader`` whose workers fetch many samples at once.

    Every torch argument keeps its meaning. Three are added:

    num_fetch_workers
        Samples each worker process (or the main process when ``num_workers=0``) fetches
        concurrently.
    fetch_impl
        ``"threaded"`` (a thread pool) or ``"asyncio"`` (an event loop, uvloop when installed).
    batch_pool
        Batches each worker keeps in flight. The loader sends each worker at least this many
        index batches ahead (``max(prefetch_factor, batch_pool)``), so it takes effect.

    Map-style datasets get the concurrency; an ``IterableDataset`` behaves exactly as in torch.
    """

    def __init__(self, dataset: Any, *args: Any, num_fetch_workers: int = 16, fetch_impl: str = "threaded",
                 batch_pool: int = 2, **kwargs: Any) -> None:
        config = FetchConfig(num_fetch_workers=num_fetch_workers, fetch_impl=fetch_impl, batch_pool=batch_pool)
        super().__init__(dataset, *args, **kwargs)
        self.fetch_config = config
        # NOTE (shutdown): shared by this loader and its num_workers=0 iterators; it stops its
        # threads when close() is called or when the last of them is garbage-collected.
        self._main_fetcher: SampleFetcher | None = None
        # Multi-process iterators still alive, so close() can stop their workers at once
        # (otherwise they stop when the iterator is garbage-collected, as in torch).
        self._live_iterators: weakref.WeakSet = weakref.WeakSet()

    @property
    def num_fetch_workers(self) -> int:
        return self.fetch_config.num_fetch_workers

    @property
    def fetch_impl(self) -> str:
        return self.fetch_config.fetch_impl

    @property
    def batch_pool(self) -> int:
        return self.fetch_config.batch_pool

    def _get_iterator(self) -> Any:
        if not _torch_compat.is_map_style(self):
            return super()._get_iterator()
        if self.num_workers == 0:
            if self._main_fetcher is None:
                self._main_fetcher = make_fetcher(self.dataset, self.fetch_config)
            return _torch_compat.ConcurrentSingleProcessIter(self, self._main_fetcher, self.batch_pool)
        self.check_worker_number_rationality()
        iterator = _torch_compat.ConcurrentMultiProcessingIter(self, self.fetch_config, _worker_loop)
        self._live_iterators.add(iterator)
        return iterator

    def close(self) -> None:
        """Stop worker processes (persistent ones included) and main-process fetch threads."""
        for iterator in list(self.__dict__.get("_live_iterators", ())):
            _torch_compat.shutdown_iterator(iterator)
        _torch_compat.forget_persistent_iterator(self)
        fetcher = self.__dict__.get("_main_fetcher")
        if fetcher is not None:
            fetcher.close()
            self._main_fetcher = None

    def __enter__(self) -> "DataLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
