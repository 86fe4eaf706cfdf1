"""Atomic file writes: the one home of "write a temp file, then rename it into place".

A reader sees either the old file or the whole new one, never half of it: data goes to a unique
temporary name in the same directory (so the rename cannot cross filesystems) and is renamed over
the target with ``os.replace``; on any error the temporary file is removed.

Modes: files are created with ``open`` (mode ``0o666`` less the process umask), like any file the
user writes, never with ``mkstemp`` (always ``0o600``: unreadable by another user or container).

Writers that use it: TFRecord files, tar shards and their manifest (``tools/make_shards.py``),
JSON index and classes files, converted-format metadata, the disk cache, the local store (and so
``tools/upload`` to a local target), batchup's shared constants, and the benchmark data
preparation. Converted-format data files are written by libraries (h5py, pyarrow, numpy) that
open a path themselves: their ``FileWriter`` hands them a :func:`temp_name` and renames it into
place on commit, the same protocol in two steps.
``tests/storage/test_file_modes.py`` runs every writer and tool and checks the modes.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["TEMP_MARKER", "AtomicFile", "atomic_open", "atomic_write_bytes", "temp_name", "is_temp_name"]

# Part of every temporary name, so cleanup code and tests can recognise leftovers.
TEMP_MARKER = ".tmp-"


def temp_name(target: str | os.PathLike) -> Path:
    """A hidden sibling of ``target`` unique to this call: ``.images_3.npy.tmp-<pid>-<thread>-<random>``."""
    target = Path(target)
    return target.with_name(f".{target.name}{TEMP_MARKER}{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}")


def is_temp_name(name: str) -> bool:
    """A name :func:`temp_name` made (a write in progress, or one an interrupted run left)."""
    return name.startswith(".") and TEMP_MARKER in name


class AtomicFile:
    """A new file written in pieces and published by :meth:`commit` (for writers with an
    open/write/close life cycle, such as ``TFRecordWriter``); :meth:`discard` drops it.

    ``file`` is the open temporary file. As a context manager: commit when the block ends
    normally, discard when it raises. ``fsync=True`` flushes the data to disk before the rename.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "wb", *, fsync: bool = False, **kwargs: Any) -> None:
        if not any(c in mode for c in "wx"):
            raise ValueError(f"atomic writes create a new file; mode must contain 'w' or 'x', got {mode!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.tmp = temp_name(self.path)
        # NOTE: "x" + open(): a fresh file whose mode follows the umask (see the module docstring).
        self.file: IO[Any] = open(self.tmp, mode.replace("w", "x"), **kwargs)
        self.done = False

    def commit(self) -> Path:
        """Close the temporary file and rename it over ``path``."""
        if self.done:
            return self.path
        self.done = True
        try:
            if self.fsync:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self._remove()
            raise
        return self.path

    def discard(self) -> None:
        """Close and remove the temporary file; ``path`` is not touched."""
        if self.done:
            return
        self.done = True
        self._remove()

    def _remove(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """``with atomic_open(p, "w") as f: ...``: ``p`` appears complete when the block ends without error."""
    atomic = AtomicFile(path, mode, **kwargs)
    try:
        yield atomic.file
    except BaseException:
        atomic.discard()
        raise
    atomic.commit()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)
