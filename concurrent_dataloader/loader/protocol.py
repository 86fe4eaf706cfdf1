"""The fetch/decode protocol that lets the fetchers overlap I/O and keep CPU work off the event loop.

A dataset opts in by subclassing :class:`ConcurrentDataset` (or by providing the same three
methods). Any other map-style ``Dataset`` still works: its ``__getitem__`` runs in a fetch
thread (threaded) or in an executor thread (asyncio).

The three steps:

``fetch_raw(index)``
    Blocking, latency-bound: return the raw payload (usually ``bytes``) for ``index``.
    Runs in a fetch thread.
``fetch_raw_async(index)``
    The same as a coroutine, run on the worker's event loop. The default runs
    ``fetch_raw`` in the loop's executor, so a dataset only needs to override it when it
    has a truly asynchronous client (aiobotocore, aiofiles).
``decode(index, raw)``
    CPU-bound: turn the payload into the sample (decode, transform, label). It never runs
    on the event-loop thread.

Optional hooks: ``describe(index) -> str`` names the key/path in error messages, and
``aclose_fetch_resources()`` (a coroutine, run on the event loop) / ``close_fetch_resources()``
release per-process clients when a fetcher shuts down.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import Dataset

__all__ = ["ConcurrentDataset", "DatasetWrapper", "SupportsFetchDecode", "is_fetch_decode", "describe_index"]


@runtime_checkable
class SupportsFetchDecode(Protocol):
    def fetch_raw(self, index: int) -> Any: ...

    async def fetch_raw_async(self, index: int) -> Any: ...

    def decode(self, index: int, raw: Any) -> Any: ...


class ConcurrentDataset(Dataset):
    """Base class for datasets that split loading into a fetch step and a decode step."""

    def fetch_raw(self, index: int) -> Any:
        raise NotImplementedError

    async def fetch_raw_async(self, index: int) -> Any:
        # NOTE: runs the blocking fetch in the loop's default executor; the asyncio fetcher
        # sizes that executor to num_fetch_workers, so this does not cap concurrency.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.fetch_raw, index)

    def decode(self, index: int, raw: Any) -> Any:
        return raw

    def describe(self, index: int) -> str | None:
        return None

    def __getitem__(self, index: int) -> Any:
        return self.decode(index, self.fetch_raw(index))


class DatasetWrapper(ConcurrentDataset):
    """Base for a dataset that wraps ``self.dataset``: a fetcher shutting down the wrapper must
    release the wrapped dataset's per-process clients too."""

    dataset: Any

    def close_fetch_resources(self) -> None:
        close = getattr(self.dataset, "close_fetch_resources", None)
        if callable(close):
            close()

    async def aclose_fetch_resources(self) -> None:
        aclose = getattr(self.dataset, "aclose_fetch_resources", None)
        if callable(aclose):
            await aclose()


def is_fetch_decode(dataset: object) -> bool:
    return all(callable(getattr(dataset, name, None)) for name in ("fetch_raw", "fetch_raw_async", "decode"))


def describe_index(dataset: object, index: Any) -> str | None:
    describe = getattr(dataset, "describe", None)
    if not callable(describe):
        return None
    try:
        return describe(index)
    except Exception:  # a broken describe() must never hide the real error
        return None
