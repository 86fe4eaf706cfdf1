"""A bounded on-disk cache of object bytes, shared by every process that opens the same directory.

Why on disk and not in memory: DataLoader workers are separate processes (and are re-created
every epoch unless ``persistent_workers``), so a per-process dict would be empty again in the
next epoch. Files are visible to all workers and survive restarts.

Layout: ``<directory>/<namespace hash>/<2 hex>/<sha256 of key>``. Entries are written to a
temp file in the same directory and renamed into place (``os.replace``), so a reader sees either
no entry or a complete one, never a partial write, even with many writers.

Eviction: least recently used first, by file mtime (a hit refreshes it). When a process has
written ``check_every_bytes`` since its last look, it scans the cache (under a non-blocking
``flock``, so only one process scans at a time) and deletes the oldest entries until the total is
at most ``low_water`` of ``max_bytes``. The bound is therefore approximate: it can be exceeded
by up to ``check_every_bytes`` per writing process between scans.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from .._atomic import TEMP_MARKER, atomic_write_bytes
from .._process_local import ProcessLocal, drop_process_local

__all__ = ["DiskCache", "default_cache_dir"]

try:  # POSIX only; on other platforms scans may overlap, which is safe but wasteful.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


def default_cache_dir() -> Path:
    """``$CDL_CACHE_DIR``, else ``$XDG_CACHE_HOME/concurrent_dataloader``, else ``~/.cache/concurrent_dataloader``."""
    if os.environ.get("CDL_CACHE_DIR"):
        return Path(os.environ["CDL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "concurrent_dataloader"


class _CacheCounters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.written_since_scan = 0
        self.hits = 0
        self.misses = 0
        self.evicted = 0


class DiskCache:
    """``get(key) -> bytes | None`` and ``put(key, data)``, safe across threads and processes.

    namespace
        Keeps different sources apart in one directory (e.g. ``s3|endpoint|bucket|prefix``),
        so the same key in two buckets never collides.
    max_bytes
        Upper bound on the cache size (approximate, see the module docstring).
    """

    def __init__(self, directory: str | os.PathLike | None = None, *, namespace: str = "",
                 max_bytes: int = 50 * 2**30, low_water: float = 0.9,
                 check_every_bytes: int | None = None) -> None:
        from ..errors import ConfigError

        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ConfigError(f"cache max_bytes must be a positive int, got {max_bytes!r}")
        if not 0 < low_water <= 1:
            raise ConfigError(f"cache low_water must be in (0, 1], got {low_water!r}")
        self.base_dir = Path(directory) if directory is not None else default_cache_dir()
        self.namespace = namespace
        ns = hashlib.sha256(namespace.encode()).hexdigest()[:16]
        self.directory = self.base_dir / ns
        self.max_bytes = max_bytes
        self.low_water = low_water
        self.check_every_bytes = check_every_bytes or max(1, max_bytes // 20)
        self.directory.mkdir(parents=True, exist_ok=True)

    # This process's counters and their lock: see NOTE [ Per-process state ].
    _proc = ProcessLocal(lambda self: _CacheCounters())

    def __getstate__(self) -> dict[str, Any]:
        return drop_process_local(self.__dict__)

    def path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.directory / digest[:2] / digest

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:  # never cached, evicted by another process just now, or unreadable
            st = self._proc
            with st.lock:
                st.misses += 1
            return None
        try:
            os.utime(path)  # LRU: a hit makes the entry young again
        except OSError:
            pass
        st = self._proc
        with st.lock:
            st.hits += 1
        return data

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` atomically. Failures (disk full, permissions) are swallowed: a cache is optional."""
        try:
            atomic_write_bytes(self.path(key), data)
        except OSError:
            return
        st = self._proc
        with st.lock:
            st.written_since_scan += len(data)
            due = st.written_since_scan >= self.check_every_bytes
            if due:
                st.written_since_scan = 0
        if due:
            self.evict()

    def _entries(self) -> list[tuple[float, int, Path]]:
        entries = []
        for sub in self.directory.iterdir() if self.directory.exists() else ():
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                if TEMP_MARKER in entry.name:  # a write in progress
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, st.st_size, Path(entry.path)))
        return entries

    def total_bytes(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def evict(self) -> int:
        """Delete least recently used entries until the cache is under ``low_water * max_bytes``.

        Returns the number of entries removed by this call (0 if another process is scanning).
        """
        lock_path = self.directory / ".evict.lock"
        with open(lock_path, "a") as lock_file:
            if fcntl is not None:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return 0  # NOTE: another process is already evicting; it will bring the size down.
            entries = self._entries()
            total = sum(size for _, size, _ in entries)
            if total <= self.max_bytes:
                return 0
            target = int(self.max_bytes * self.low_water)
            removed = 0
            for _, size, path in sorted(entries, key=lambda e: e[0]):
                if total <= target:
                    break
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                total -= size
                removed += 1
        st = self._proc
        with st.lock:
            st.evicted += removed
        return removed

    def clear(self) -> None:
        for _, _, path in self._entries():
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def stats(self) -> dict[str, int]:
        """This process's hits/misses/evictions (other processes keep their own counts)."""
        st = self._proc
        with st.lock:
            return {"hits": st.hits, "misses": st.misses, "evicted": st.evicted}

    def __repr__(self) -> str:
        return f"DiskCache({str(self.directory)!r}, max_bytes={self.max_bytes})"
