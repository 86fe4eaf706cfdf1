"""The server's buckets: in memory (ranged GETs slice the stored bytes), or backed by a directory
(key ``a/b.jpg`` is the file ``root/a/b.jpg``; atomic writes)."""

from __future__ import annotations

import email.utils
import hashlib
import os
import stat
import time
from pathlib import Path

from concurrent_dataloader._atomic import atomic_write_bytes

__all__ = ["InvalidKeyError", "MemBucket", "DirBucket", "Bucket"]


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _iso_date(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class _Meta:
    __slots__ = ("size", "etag", "mtime", "last_modified")

    def __init__(self, size: int, etag: str, mtime: float) -> None:
        self.size = size
        self.etag = etag
        self.mtime = mtime
        self.last_modified = _http_date(mtime)


class MemBucket:
    def __init__(self, name: str) -> None:
        self.name = name
        self.created = time.time()
        self.objects: dict[str, tuple[bytes, _Meta]] = {}
        self._sorted: list[str] | None = None

    def get(self, key: str) -> tuple[bytes, _Meta] | None:
        return self.objects.get(key)

    def head(self, key: str) -> _Meta | None:
        obj = self.objects.get(key)
        return obj[1] if obj is not None else None

    def put(self, key: str, data: bytes) -> _Meta:
        meta = _Meta(len(data), '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"', time.time())
        if key not in self.objects:
            self._sorted = None
        self.objects[key] = (data, meta)
        return meta

    def delete(self, key: str) -> None:
        if self.objects.pop(key, None) is not None:
            self._sorted = None

    def keys(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.objects)
        return self._sorted

    def __len__(self) -> int:
        return len(self.objects)


class InvalidKeyError(ValueError):
    """A key that cannot name a file inside a directory-backed bucket."""


class DirBucket:
    """A bucket backed by a directory: key ``a/b.jpg`` is the file ``root/a/b.jpg``.

    Reads are plain blocking reads: objects are small and page-cached, and a thread hop would
    cost more than the read. Writes are atomic (temp file, then ``os.replace``).
    """

    _RESCAN_S = 2.0

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root.resolve()
        self.created = self.root.stat().st_mtime
        self._sorted: list[str] | None = None
        self._scanned_at = 0.0

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
            raise InvalidKeyError(f"key {key!r} cannot be stored in a directory-backed bucket")
        return self.root.joinpath(*parts)

    def _meta(self, st: os.stat_result) -> _Meta:
        return _Meta(st.st_size, f'"{st.st_mtime_ns:x}-{st.st_size:x}"', st.st_mtime)

    def get(self, key: str) -> tuple[bytes, _Meta] | None:
        try:
            path = self._path(key)
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if not _is_regular(st):
                    return None
                data = f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, InvalidKeyError):
            return None
        return data, self._meta(st)

    def head(self, key: str) -> _Meta | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError, InvalidKeyError):
            return None
        return self._meta(st) if _is_regular(st) else None

    def put(self, key: str, data: bytes) -> _Meta:
        path = self._path(key)
        atomic_write_bytes(path, data)
        self._sorted = None
        return self._meta(path.stat())

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, InvalidKeyError):
            return
        self._sorted = None

    def keys(self) -> list[str]:
        # NOTE: the listing is cached; our own writes invalidate it, outside writers are seen
        # within _RESCAN_S seconds.
        now = time.monotonic()
        if self._sorted is None or now - self._scanned_at > self._RESCAN_S:
            keys = []
            for dirpath, dirnames, files in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = os.path.relpath(dirpath, self.root)
                for name in files:
                    if name.startswith("."):  # temp files of in-progress writes
                        continue
                    keys.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
            keys.sort()
            self._sorted = keys
            self._scanned_at = now
        return self._sorted

    def __len__(self) -> int:
        return len(self.keys())


def _is_regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


Bucket = MemBucket | DirBucket
