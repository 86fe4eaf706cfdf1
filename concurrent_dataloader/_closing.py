"""``with obj:`` closes ``obj``: one mixin for every class whose ``close()`` releases threads,
sockets, file handles or store clients (datasets, stores, pools, accessors)."""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["Closing", "ClosesStore"]

_C = TypeVar("_C", bound="Closing")


class Closing:
    """Context manager protocol for a class with ``close()``: ``__exit__`` calls it."""

    def close(self) -> None:  # pragma: no cover - every user overrides it
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClosesStore(Closing):
    """A dataset whose fetch resources are those of one :class:`ByteStore`, ``_fetch_store``:
    the loader's per-engine shutdown hooks and ``close()`` release that store's clients."""

    @property
    def _fetch_store(self) -> Any:
        raise NotImplementedError

    def close_fetch_resources(self) -> None:
        self._fetch_store.close()

    async def aclose_fetch_resources(self) -> None:
        await self._fetch_store.aclose()

    def close(self) -> None:
        """Release this process's store clients / file handles (reopened lazily if used again)."""
        self._fetch_store.close()
