"""Atomic file writes: every writer in the package goes through here.

A reader sees either the old file or the whole new one, never half of it: data goes to a unique
temporary name in the same directory (so the rename cannot cross filesystems) and is renamed over
the target with ``os.replace``; on any error the temporary file is removed. Files are created
with ``open`` (normal umask permissions), not ``mkstemp`` (which would make them owner-only).
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["TEMP_MARKER", "atomic_open", "atomic_write_bytes", "temp_name"]

# Part of every temporary name, so cleanup code and tests can recognise leftovers.
TEMP_MARKER = ".tmp-"


def temp_name(target: str | os.PathLike) -> Path:
    target = Path(target)
    return target.with_name(f".{target.name}{TEMP_MARKER}{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """``with atomic_open(p, "w") as f: ...``: ``p`` appears complete when the block ends without error."""
    if not any(c in mode for c in "wx"):
        raise ValueError(f"atomic_open writes a new file; mode must contain 'w' or 'x', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)
