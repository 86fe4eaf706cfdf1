"""The byte-source interface every store implements, and the registry that picks one by URL.

A store returns an object's bytes by key (optionally a byte range), synchronously for the
threaded fetcher and as a coroutine for the asyncio fetcher, and lists a prefix.

See NOTE [ Fork safety ] (``concurrent_dataloader/__init__.py``): stores hold clients, sockets
or file handles. Implementations keep them in per-process state
(:class:`~concurrent_dataloader._process_local.ProcessLocal`, see NOTE [ Per-process state ]):
created lazily in the process that uses them and dropped when pickled, so a store can be handed
to DataLoader workers under fork and spawn.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator

from .._closing import Closing
from .url import parse_store_url

__all__ = ["ByteStore", "ByteRange", "register_store", "open_store", "STORE_REGISTRY"]

# (offset, length) in bytes.
ByteRange = tuple[int, int]


class ByteStore(Closing, ABC):
    @abstractmethod
    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        """The object's bytes (or ``byte_range`` of them). Missing key: ``FileNotFoundError``/``KeyError``
        subclass naming the key."""

    async def aget(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.get, key, byte_range)

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix``, relative to the store's root, in sorted order."""

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError(f"{type(self).__name__} is read-only")

    def size(self, key: str) -> int:
        raise NotImplementedError

    def describe(self, key: str) -> str:
        """A human-readable location for error messages (never contains credentials)."""
        return key

    def close(self) -> None:
        """Release this process's clients/handles; the store stays usable (they reopen lazily)."""

    async def aclose(self) -> None:
        """Release async clients bound to the running event loop."""


STORE_REGISTRY: dict[str, Callable[..., ByteStore]] = {}


def register_store(scheme: str, factory: Callable[..., ByteStore]) -> None:
    """Register a store for URLs ``<scheme>://...``; ``factory(url, **options)`` builds it.

    A scheme is registered once: a second registration (two modules claiming one scheme, or a
    module imported twice under two names) is refused instead of silently replacing the first.
    """
    existing = STORE_REGISTRY.get(scheme)
    if existing is not None:
        raise ValueError(f"a store is already registered for {scheme!r} URLs "
                         f"({existing.__module__}.{existing.__qualname__}); pick another scheme")
    STORE_REGISTRY[scheme] = factory


def open_store(url: str, **options: Any) -> ByteStore:
    """``s3://bucket/prefix`` or a local path / ``file://`` URL."""
    scheme = parse_store_url(url).scheme
    try:
        factory = STORE_REGISTRY[scheme]
    except KeyError:
        raise ValueError(f"no store registered for {scheme!r} URLs (url={url!r}); known: {sorted(STORE_REGISTRY)}") from None
    return factory(url, **options)
