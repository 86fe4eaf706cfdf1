"""Objects held in memory, optionally loaded on first use.

Used for archives that must be read whole anyway (compressed tar files, ``data_in_memory``
with a remote archive): ``loader(key)`` reads and decompresses the object once, then every
ranged read is a slice. Not addressable by URL (there is nothing to name), so no scheme.

NOTE [ Fork safety ] (``concurrent_dataloader/__init__.py``): forked workers share the parent's
loaded bytes copy-on-write. With a ``loader``, the bytes are not pickled: under spawn each
process loads its own copy on first use. Without one, the objects are the store's content and
are pickled with it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from .._process_local import ProcessLock
from .base import ByteRange, ByteStore

__all__ = ["MemoryStore"]

# Guards loading against two fetch threads racing (never inherited locked by a child).
_LOAD_LOCK = ProcessLock()


class MemoryStore(ByteStore):
    def __init__(self, objects: dict[str, bytes] | None = None, loader: Callable[[str], bytes] | None = None) -> None:
        self._objects: dict[str, bytes] = dict(objects or {})
        self.loader = loader

    def _data(self, key: str) -> bytes:
        data = self._objects.get(key)
        if data is None:
            if self.loader is None:
                raise FileNotFoundError(f"{self.describe(key)}: no such object")
            with _LOAD_LOCK:
                data = self._objects.get(key)
                if data is None:
                    data = self._objects[key] = self.loader(key)
        return data

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        data = self._data(key)
        if byte_range is None:
            return data
        offset, length = byte_range
        out = data[offset:offset + length]
        if len(out) != length:
            raise EOFError(f"{self.describe(key)}: wanted {length} bytes at offset {offset}, got {len(out)}")
        return out

    async def aget(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        if key not in self._objects:  # the first load may read a file or a URL: off the event loop
            return await super().aget(key, byte_range)
        return self.get(key, byte_range)

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(sorted(k for k in self._objects if k.startswith(prefix)))

    def put(self, key: str, data: bytes) -> None:
        self._objects[key] = bytes(data)

    def size(self, key: str) -> int:
        return len(self._data(key))

    def describe(self, key: str) -> str:
        return f"<memory>/{key}"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.loader is not None:
            state["_objects"] = {}
        return state

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._objects)} objects)"
