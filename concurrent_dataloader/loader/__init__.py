"""The concurrent DataLoader: worker loop, fetchers, batch pool and the fetch/decode protocol."""

from .config import FETCH_IMPLS, FetchConfig, FetchImpl
from .dataloader import DataLoader
from .asyncio_fetcher import AsyncioFetcher
from .batch_handles import BatchHandle
from .fetchers import SampleFetcher, make_fetcher
from .getitems import ConcurrentGetitems, ConcurrentGetitemsMixin, concurrent_getitems
from .protocol import ConcurrentDataset, SupportsFetchDecode, is_fetch_decode
from .threaded_fetcher import ThreadedFetcher
from .worker import _worker_loop  # noqa: F401  private: the seed's patch target, not public API

__all__ = [
    "FETCH_IMPLS", "FetchConfig", "FetchImpl", "DataLoader", "AsyncioFetcher", "BatchHandle", "SampleFetcher",
    "ThreadedFetcher", "make_fetcher", "ConcurrentGetitems", "ConcurrentGetitemsMixin",
    "concurrent_getitems", "ConcurrentDataset", "SupportsFetchDecode", "is_fetch_decode",
]
