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

A subclass that overrides ``__getitem__`` or ``__getitems__`` below the class that defines the
three methods is loaded through its own method instead (see :func:`is_fetch_decode`).

Optional hooks: ``describe(index) -> str`` names the key/path in error messages, and
``aclose_fetch_resources()`` (a coroutine, run on the event loop) / ``close_fetch_resources()``
release per-process clients when a fetcher shuts down.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import Dataset

__all__ = ["ConcurrentDataset", "DatasetWrapper", "SupportsFetchDecode", "is_fetch_decode", "describe_index",
           "same_as_per_sample", "is_same_as_per_sample"]


def same_as_per_sample(method: Any) -> Any:
    """Marks a ``__getitem__`` that equals ``decode(fetch_raw(i))`` of the same object, or a
    ``__getitems__`` that equals ``[self[i] for i in indices]``: overriding them with such a
    method does not stop the loader from using the protocol (or per-sample loading)."""
    method._cdl_same_as_per_sample = True
    return method


def is_same_as_per_sample(method: Any) -> bool:
    return bool(getattr(method, "_cdl_same_as_per_sample", False))


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

    @same_as_per_sample
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


_PROTOCOL = ("fetch_raw", "fetch_raw_async", "decode")
# Classes whose __getitem__ only raises NotImplementedError (or does not exist): not an override.
_NEUTRAL_OWNERS = (Dataset, object)


def _owner_rank(cls: type, name: str) -> int | None:
    """Position in ``cls.__mro__`` of the class that defines ``name`` (0 = ``cls`` itself)."""
    for rank, klass in enumerate(cls.__mro__):
        if name in vars(klass):
            return rank
    return None


def is_fetch_decode(dataset: object) -> bool:
    """True when the loader may load ``dataset[i]`` as ``dataset.decode(i, dataset.fetch_raw(i))``.

    The three protocol methods must exist, and neither ``__getitem__`` nor ``__getitems__`` may be
    overridden *below* the classes that define them: a user's subclass that changes
    ``__getitem__`` (say, to add an augmentation) is loaded through its own ``__getitem__``, as
    torch would (correct beats fast). A ``__getitem__`` defined in the same class as ``decode``
    is the protocol's own (see the module docstring); an instance attribute ``__getitems__``
    (which torch's fetcher would call) always counts as an override.
    """
    if not all(callable(getattr(dataset, name, None)) for name in _PROTOCOL):
        return False
    if "__getitems__" in getattr(dataset, "__dict__", {}):
        return False
    cls = type(dataset)
    ranks = [_owner_rank(cls, name) for name in _PROTOCOL]
    # Methods reached only through __getattr__ or the instance: trust no override at all.
    floor = min(len(cls.__mro__) if r is None else r for r in ranks)
    for name in ("__getitem__", "__getitems__"):
        rank = _owner_rank(cls, name)
        if rank is None or rank >= floor or cls.__mro__[rank] in _NEUTRAL_OWNERS:
            continue
        if not is_same_as_per_sample(getattr(cls, name)):
            return False
    return True


def describe_index(dataset: object, index: Any) -> str | None:
    describe = getattr(dataset, "describe", None)
    if not callable(describe):
        return None
    try:
        return describe(index)
    except Exception:  # a broken describe() must never hide the real error
        return None
