"""Local files mapped into memory, read-only and shared (scheme ``mmap``).

For ``data_in_memory``-style reading of large local files: each file is mapped once with
``MAP_SHARED``/``ACCESS_READ`` and asked to be read in (``MADV_WILLNEED``); a ranged read is a
slice of the mapping.

NOTE [ Fork safety ] (``concurrent_dataloader/__init__.py``): unlike per-process state, a
mapping *is* inherited by forked workers on purpose: it is read-only and shared, so the workers
read the same page-cache pages instead of each copying the file. It is never pickled: an
unpickled copy (spawn) maps the file again.
"""

from __future__ import annotations

import mmap
from typing import Any

from .._process_local import ProcessLock
from .base import ByteRange, register_store
from .local import LocalStore, short_read_error
from .url import local_path

__all__ = ["MmapStore"]

# Guards lazy mapping against two fetch threads racing (never inherited locked by a child).
_MAP_LOCK = ProcessLock()


class MmapStore(LocalStore):
    """Files under ``root``, each mapped read-only on first use."""

    def __init__(self, root: Any = "", max_object_bytes: int | None = None) -> None:
        super().__init__(root, max_object_bytes)
        self._maps: dict[str, mmap.mmap] = {}

    def mapping(self, key: str) -> mmap.mmap:
        m = self._maps.get(key)
        if m is None:
            with _MAP_LOCK:
                m = self._maps.get(key)
                if m is None:
                    with open(self.path(key), "rb") as f:
                        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    if hasattr(m, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
                        m.madvise(mmap.MADV_WILLNEED)  # read it in now, as "in memory" promises
                    self._maps[key] = m
        return m

    def warm(self, key: str) -> None:
        """Map ``key`` now instead of on the first read."""
        self.mapping(key)

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        if byte_range is None:
            return super().get(key)
        offset, length = byte_range
        data = self.mapping(key)[offset:offset + length]
        if len(data) != length:
            raise short_read_error(self.path(key), offset, length, len(data))
        return data

    async def aget(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        if byte_range is None:
            return await super().aget(key)
        return self.get(key, byte_range)  # a memory copy: not worth a thread hop

    def close(self) -> None:
        """Unmap every file (they are mapped again on next use)."""
        maps, self._maps = self._maps, {}
        for m in maps.values():
            m.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def __repr__(self) -> str:
        return f"MmapStore({str(self.root)!r})"


def _from_url(url: str, **options: Any) -> MmapStore:
    return MmapStore(local_path(url), **options)


register_store("mmap", _from_url)
