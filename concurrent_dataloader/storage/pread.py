"""Local files read with ``os.pread`` on a cached per-process descriptor (scheme ``pread``).

For a few large files read many times at random offsets (a tar archive, converted arrays):
a ranged read is one ``pread`` instead of open + seek + read + close, and the fetch threads
share one descriptor per file, because ``pread`` takes the offset as an argument (no seek
race). Whole-file reads, listing and writes are :class:`LocalStore`'s.

Not for many small files: it keeps one descriptor per file read until :meth:`close`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from .._process_local import ProcessLocal, drop_process_local
from .base import ByteRange, register_store
from .local import LocalStore, short_read_error
from .url import local_path

__all__ = ["PreadStore"]


class _Descriptors:
    """One process's open descriptors, by key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fds: dict[str, int] = {}

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass


class PreadStore(LocalStore):
    """Files under ``root``; ranged reads with ``os.pread`` on a per-process descriptor.

    The descriptors are per-process state (NOTE [ Per-process state ] in ``_process_local.py``):
    a forked worker or an unpickled copy opens its own.
    """

    _descriptors = ProcessLocal(lambda self: _Descriptors(), close=_Descriptors.close, close_with_owner=True)

    def fd(self, key: str) -> int:
        """This process's descriptor for ``key`` (opened on first use)."""
        d = self._descriptors
        fd = d.fds.get(key)
        if fd is None:
            with d.lock:
                fd = d.fds.get(key)
                if fd is None:
                    fd = d.fds[key] = os.open(self.path(key), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
                                              | getattr(os, "O_BINARY", 0))
        return fd

    def warm(self, key: str) -> None:
        """Open this process's descriptor for ``key`` now instead of on the first read."""
        self.fd(key)

    def read_at(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``, fewer only at the end of the file."""
        fd = self.fd(key)
        data = os.pread(fd, length, offset)
        while len(data) < length:  # regular files only return short at EOF, but be exact
            more = os.pread(fd, length - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        if byte_range is None:
            return super().get(key)
        offset, length = byte_range
        data = self.read_at(key, offset, length)
        if len(data) != length:
            raise short_read_error(self.path(key), offset, length, len(data))
        return data

    async def aget(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(None, self.get, key, byte_range)

    def close(self) -> None:
        """Close this process's descriptors (they reopen on next use)."""
        PreadStore._descriptors.reset(self)

    def __getstate__(self) -> dict[str, Any]:
        return drop_process_local(self.__dict__)

    def __repr__(self) -> str:
        return f"PreadStore({str(self.root)!r})"


def _from_url(url: str, **options: Any) -> PreadStore:
    return PreadStore(local_path(url), **options)


register_store("pread", _from_url)
