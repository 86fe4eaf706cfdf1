"""Byte-level helpers shared by the converted-format readers and writers.

* :class:`RangedFile` lets h5py, tarfile and pyarrow read an object of any :class:`ByteStore`
  (S3 included) through ranged GETs, with a small block cache so that libraries issuing many
  tiny reads (HDF5 B-tree walks, tar header scans) do not turn into one request per read.
* :class:`SparseFile` serves reads from byte ranges we already fetched, so a decode step can
  hand pyarrow a "file" without doing I/O itself.
* :func:`ipc_file_blocks` parses the footer of an Arrow IPC file to find each record batch's
  byte range, which pyarrow does not expose, so one sample is one ranged GET.
* :func:`atomic_write_bytes` / :func:`is_temp_name` (from ``_atomic``): every output file is
  written under a temporary name and renamed into place, so a crash never leaves a file that
  looks complete.
"""

from __future__ import annotations

import io
import struct
import threading
from typing import TYPE_CHECKING, Callable

from ..._atomic import atomic_write_bytes, is_temp_name
from ...errors import DataFormatError

if TYPE_CHECKING:  # pragma: no cover
    from ...storage.base import ByteStore

__all__ = [
    "RangedFile",
    "SparseFile",
    "IpcBlock",
    "ipc_file_blocks",
    "parquet_footer",
    "atomic_write_bytes",
    "is_temp_name",
    "KeyedLocks",
]



class _SeekableReader(io.RawIOBase):
    """Read-only, seekable raw file over ``self._size`` bytes; subclasses implement ``readinto``."""

    _pos = 0
    _size = 0

    def _where(self) -> str:
        return type(self).__name__

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence not in (io.SEEK_SET, io.SEEK_CUR, io.SEEK_END):
            raise ValueError(f"bad whence {whence}")
        pos = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence] + offset
        if pos < 0:
            raise OSError(f"{self._where()}: negative seek position {pos}")
        self._pos = pos
        return pos


class RangedFile(_SeekableReader):
    """A read-only, seekable file over one object of a :class:`ByteStore`.

    Reads are served from ``block_size``-aligned blocks fetched with ranged GETs and kept in a
    small LRU, so libraries that read a few bytes at a time cost a handful of requests.

    NOTE (threads): one instance is not meant to be shared by threads that seek concurrently;
    readers create one per (process, file) and guard it with a lock when they must share it.
    """

    def __init__(self, store: "ByteStore", key: str, size: int | None = None, *,
                 block_size: int = 1 << 20, max_blocks: int = 8) -> None:
        super().__init__()
        self.store = store
        self.key = key
        self._size = store.size(key) if size is None else int(size)
        self._pos = 0
        self.block_size = int(block_size)
        self.max_blocks = int(max_blocks)
        self._blocks: dict[int, bytes] = {}
        self.requests = 0

    @property
    def size(self) -> int:
        return self._size

    def _where(self) -> str:
        return self.store.describe(self.key)

    def _block(self, index: int) -> bytes:
        data = self._blocks.pop(index, None)
        if data is None:
            start = index * self.block_size
            length = min(self.block_size, self._size - start)
            data = self.store.get(self.key, (start, length))
            self.requests += 1
            if len(self._blocks) >= self.max_blocks:
                self._blocks.pop(next(iter(self._blocks)))
        self._blocks[index] = data  # re-insert: most recently used last
        return data

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self._size - self._pos))
        done = 0
        # A large read (bigger than the cache) goes straight to the store in one request.
        if want > self.block_size * 2:
            data = self.store.get(self.key, (self._pos, want))
            self.requests += 1
            view[:want] = data
            self._pos += want
            return want
        while done < want:
            index, within = divmod(self._pos, self.block_size)
            block = self._block(index)
            n = min(want - done, len(block) - within)
            if n <= 0:
                break
            view[done:done + n] = block[within:within + n]
            done += n
            self._pos += n
        return done

    def read_at(self, offset: int, length: int) -> bytes:
        self.seek(offset)
        return self.read(length)


class SparseFile(_SeekableReader):
    """A file of ``size`` bytes whose content is known only for some ranges.

    Reads inside a known range are served from memory; anything else goes to ``fallback``
    (a ``(offset, length) -> bytes`` callable) or raises, so a wrong assumption about which
    bytes a library needs costs an extra read, never wrong data.
    """

    def __init__(self, size: int, parts: dict[int, bytes],
                 fallback: Callable[[int, int], bytes] | None = None, name: str = "<sparse>") -> None:
        super().__init__()
        self._size = size
        self._parts = sorted(parts.items())
        self._fallback = fallback
        self._pos = 0
        self._name = name


    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        n = min(len(view), max(0, self._size - self._pos))
        for start, data in self._parts:
            if start <= self._pos and self._pos + n <= start + len(data):
                rel = self._pos - start
                view[:n] = data[rel:rel + n]
                self._pos += n
                return n
        if self._fallback is None:
            raise OSError(f"{self._name}: read of {n} bytes at offset {self._pos} outside the fetched ranges")
        data = self._fallback(self._pos, n)
        view[:len(data)] = data
        self._pos += len(data)
        return len(data)


# --------------------------------------------------------------------------- Arrow IPC footer

_IPC_MAGIC = b"ARROW1"


class IpcBlock(tuple):
    """``(offset, metadata_length, body_length)`` of one record batch in an IPC file."""

    __slots__ = ()

    @property
    def offset(self) -> int:
        return self[0]

    @property
    def length(self) -> int:
        return self[1] + self[2]


def _fb_field(buf: bytes, table: int, field: int) -> int:
    """Absolute position of ``field`` of the flatbuffer table at ``table`` (0 if absent)."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vt_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * field
    if slot + 2 > vt_size:
        return 0
    rel = struct.unpack_from("<H", buf, vtable + slot)[0]
    return table + rel if rel else 0


def _fb_struct_vector(buf: bytes, pos: int, fmt: str) -> list[tuple]:
    if not pos:
        return []
    vec = pos + struct.unpack_from("<I", buf, pos)[0]
    count = struct.unpack_from("<I", buf, vec)[0]
    size = struct.calcsize(fmt)
    return [struct.unpack_from(fmt, buf, vec + 4 + size * k) for k in range(count)]


def _footer_need(tail: bytes, file_size: int, name: str, what: str, magic: bytes, head: int) -> int:
    """How many trailing bytes hold the footer of a file ending ``<footer><int32 length><magic>``
    and starting with ``head`` bytes of magic (Arrow IPC, Parquet)."""
    kind = what.split(" ", 1)[1]
    trailer = 4 + len(magic)
    if file_size < head + trailer or not tail.endswith(magic):
        raise DataFormatError(f"{name}: not {what} file (no {magic.decode()} magic at the end; truncated or wrong format)")
    length = struct.unpack_from("<i", tail, len(tail) - trailer)[0]
    need = length + trailer
    if length <= 0 or need + head > file_size:
        raise DataFormatError(f"{name}: corrupt {kind} footer length {length} for a {file_size}-byte file")
    return need


def ipc_file_blocks(tail: bytes, file_size: int, name: str) -> tuple[list[IpcBlock], int]:
    """Parse an Arrow IPC *file* footer from the file's last bytes.

    Returns the record-batch blocks and the footer's total length (so the caller can fetch
    more tail if ``tail`` was too short: the returned blocks are then empty and the length
    tells how much is needed). Layout (Arrow columnar format, "IPC File Format"):
    ``<footer flatbuffer><int32 footer length><"ARROW1">``; Footer fields are
    version(0), schema(1), dictionaries(2), recordBatches(3); Block is
    ``{offset: int64, metaDataLength: int32, <pad 4>, bodyLength: int64}``.
    """
    need = _footer_need(tail, file_size, name, "an Arrow IPC", _IPC_MAGIC, 8)
    if need > len(tail):
        return [], need
    footer = tail[len(tail) - need:len(tail) - 10]
    try:
        root = struct.unpack_from("<I", footer, 0)[0]
        dicts = _fb_struct_vector(footer, _fb_field(footer, root, 2), "<qi4xq")
        blocks = _fb_struct_vector(footer, _fb_field(footer, root, 3), "<qi4xq")
    except struct.error as exc:
        raise DataFormatError(f"{name}: corrupt Arrow IPC footer ({exc})") from None
    if dicts:
        raise DataFormatError(f"{name}: dictionary-encoded Arrow IPC files are not supported")
    out = [IpcBlock(b) for b in blocks]
    for b in out:
        if b[0] < 8 or b[0] + b[1] + b[2] > file_size - need:
            raise DataFormatError(f"{name}: record batch block {tuple(b)} lies outside the file ({file_size} bytes)")
    return out, need


def parquet_footer(tail: bytes, file_size: int, name: str) -> tuple[bytes | None, int]:
    """The footer bytes (``<metadata><int32 len>PAR1``) of a Parquet file from its last bytes.

    Returns ``(footer, needed)``; ``footer`` is None when ``tail`` is too short and ``needed``
    says how many trailing bytes to fetch.
    """
    need = _footer_need(tail, file_size, name, "a Parquet", b"PAR1", 4)
    if need > len(tail):
        return None, need
    return tail[len(tail) - need:], need


class KeyedLocks:
    """One lock per key, created on demand, so loading file A never waits for file B."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[object, threading.Lock] = {}

    def __call__(self, key: object) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
            return lock
