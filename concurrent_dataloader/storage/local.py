"""Local or network-filesystem ("scratch") store: plain reads for threads, aiofiles for asyncio."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from .._atomic import atomic_write_bytes
from .base import ByteRange, ByteStore, register_store
from .url import local_path

__all__ = ["LocalStore", "short_read_error"]


def short_read_error(path: Any, offset: int, length: int, got: int) -> EOFError:
    return EOFError(f"{path}: wanted {length} bytes at offset {offset}, file has only {got}")


class LocalStore(ByteStore):
    """Files under ``root``. ``max_object_bytes`` refuses whole-file reads of larger files
    (:class:`~concurrent_dataloader.errors.ObjectTooLargeError`) before reading them."""

    def __init__(self, root: str | os.PathLike = "", max_object_bytes: int | None = None) -> None:
        from .s3 import check_max_object_bytes

        self.root = Path(root) if str(root) else Path()
        self.max_object_bytes = check_max_object_bytes(max_object_bytes)

    def _check_size(self, key: str, fd: int) -> None:
        cap = self.__dict__.get("max_object_bytes")
        if cap is not None:
            size = os.fstat(fd).st_size
            if size > cap:
                from ..errors import ObjectTooLargeError

                where = self.describe(key)
                raise ObjectTooLargeError(f"{where}: file of {size} bytes is larger than max_object_bytes={cap}; "
                                          "refusing to read it", key=where)

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        with open(self.path(key), "rb") as f:
            if byte_range is None:
                self._check_size(key, f.fileno())
                return f.read()
            offset, length = byte_range
            f.seek(offset)
            data = f.read(length)
        if len(data) != length:
            raise short_read_error(self.path(key), offset, length, len(data))
        return data

    async def aget(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        import aiofiles

        async with aiofiles.open(self.path(key), "rb") as f:
            if byte_range is None:
                self._check_size(key, f.fileno())
                return await f.read()
            offset, length = byte_range
            await f.seek(offset)
            data = await f.read(length)
        if len(data) != length:
            raise short_read_error(self.path(key), offset, length, len(data))
        return data

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root
        keys = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                rel = os.path.relpath(os.path.join(dirpath, name), base).replace(os.sep, "/")
                if rel.startswith(prefix):
                    keys.append(rel)
        return iter(sorted(keys))

    def put(self, key: str, data: bytes) -> None:
        """Atomic: a temp file in the same directory, then a rename."""
        atomic_write_bytes(self.path(key), data)

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def describe(self, key: str) -> str:
        return str(self.path(key))

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"


def _from_url(url: str, **options: Any) -> LocalStore:
    return LocalStore(local_path(url), **options)


register_store("file", _from_url)
