"""Tar helpers shared by :mod:`.tar_archive` and :mod:`.shards`: member-name safety, compression
detection by magic bytes, and streaming a tar from any byte source without holding it in memory.

Security policy (the same for archives and shards). We never extract anything to disk; members
only become index rows or dict entries. Still, a name that could escape its folder is a sign
of a hostile or broken archive, so:

* names that are absolute (``/x``, ``C:\\x``) or contain a ``..`` component are **skipped with a
  warning** (they are never indexed, so they can never be read);
* symbolic links, hard links, device files, FIFOs and GNU sparse files are **skipped with a
  warning**: their bytes are not a contiguous run in the archive, or point elsewhere;
* directories and pax/GNU metadata headers are skipped silently (they are not data);
* a leading ``./`` is stripped, so ``./cat/1.jpg`` and ``cat/1.jpg`` are the same member.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import posixpath
import tarfile
import warnings
from typing import Any, BinaryIO, Callable, Iterator

from ..errors import DataFormatError

__all__ = ["COMPRESSION_MAGIC", "detect_compression", "safe_member_name", "open_decompressed",
           "iter_tar_members", "SkippedMembers", "StoreReader", "decompress_all", "check_end_of_archive"]

COMPRESSION_MAGIC: dict[str, bytes] = {
    "gzip": b"\x1f\x8b",
    "bz2": b"BZh",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
}
# How to turn a compressed archive into one that supports random access.
CONVERT_HINT = {
    "gzip": "gunzip -k {path}   (or: python -c \"import gzip,shutil; shutil.copyfileobj(gzip.open('{path}'), open('{out}','wb'))\")",
    "bz2": "bunzip2 -k {path}",
    "xz": "unxz -k {path}",
    "zstd": "zstd -d {path} -o {out}",
}


def detect_compression(head: bytes) -> str | None:
    """``'gzip'|'bz2'|'xz'|'zstd'`` from the first bytes of a file, or ``None`` (plain tar or other)."""
    for kind, magic in COMPRESSION_MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def safe_member_name(name: str) -> str | None:
    """The normalized member name, or ``None`` if it is absolute or climbs out with ``..``."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    if ".." in name.split("/"):
        return None
    while name.startswith("./"):
        name = name[2:]
    norm = posixpath.normpath(name) if name else name
    return "" if norm == "." else norm


def open_decompressed(fileobj: BinaryIO, kind: str | None, name: str) -> BinaryIO:
    """A readable stream of the decompressed bytes of ``fileobj``."""
    if kind is None:
        return fileobj
    if kind == "gzip":
        return gzip.GzipFile(fileobj=fileobj, mode="rb")  # type: ignore[return-value]
    if kind == "bz2":
        return bz2.BZ2File(fileobj, "rb")  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(fileobj, "rb")  # type: ignore[return-value]
    if kind == "zstd":
        try:
            import zstandard  # optional
        except ImportError:
            raise DataFormatError(
                f"{name} is zstd-compressed and the optional 'zstandard' package is not installed; "
                f"decompress it first: zstd -d {name}") from None
        return zstandard.ZstdDecompressor().stream_reader(fileobj)  # type: ignore[return-value]
    raise DataFormatError(f"{name}: unknown compression {kind!r}")


def decompress_all(data: bytes, kind: str | None, name: str) -> bytes:
    """All decompressed bytes (for archives that are read fully into memory)."""
    if kind is None:
        return data
    stream = open_decompressed(io.BytesIO(data), kind, name)
    try:
        return stream.read()
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise DataFormatError(f"{name}: {kind} data is corrupt or truncated: {exc}") from exc


class StoreReader(io.RawIOBase):
    """Sequential reads of one object through ranged GETs of ``chunk`` bytes.

    Why: building an index streams the whole archive once; a ranged GET per tar header would
    pay the store's latency for every member.
    """

    def __init__(self, get: Callable[[int, int], bytes], size: int, chunk: int = 8 << 20) -> None:
        self._get = get
        self._size = size
        self._chunk = chunk
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._size - self._pos, self._chunk)
        if n <= 0:
            return 0
        data = self._get(self._pos, n)
        if len(data) != n:
            raise DataFormatError(f"short read: wanted {n} bytes at offset {self._pos}, got {len(data)}")
        view[:n] = data
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos


class SkippedMembers:
    """Collects members skipped by the security policy and warns once, with examples."""

    def __init__(self, archive: str) -> None:
        self.archive = archive
        self.unsafe: list[str] = []
        self.special: list[str] = []

    def warn(self, stacklevel: int = 3) -> None:
        for what, names in (("with an absolute path or '..' (path traversal)", self.unsafe),
                            ("that are links, devices, FIFOs or sparse files", self.special)):
            if names:
                shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
                warnings.warn(f"{self.archive}: skipped {len(names)} member(s) {what}: {shown}",
                              RuntimeWarning, stacklevel=stacklevel)


def iter_tar_members(tar: tarfile.TarFile, archive: str, skipped: SkippedMembers,
                     on_member: Callable[[tarfile.TarInfo], None] | None = None
                     ) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """(safe name, TarInfo) for each regular-file member, in archive order.

    Memory stays flat: tarfile keeps every TarInfo it has read in ``tar.members``; we drop them
    as we go. Read errors (truncation, corrupt headers) become :class:`DataFormatError` naming
    the archive and the last good member.
    """
    last = None
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, ValueError) as exc:
            after = f" after member {last!r}" if last else " at its first header"
            raise DataFormatError(f"{archive}: cannot read tar archive{after}: {exc} "
                                  "(truncated or not a tar file?)") from exc
        if info is None:
            return
        tar.members.clear()
        if on_member is not None:
            on_member(info)
        last = info.name
        if info.isdir():
            continue
        name = safe_member_name(info.name)
        if name is None:
            skipped.unsafe.append(info.name)
            continue
        if not info.isreg() or info.issparse():
            if not (info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE)):
                skipped.special.append(info.name)
            continue
        if not name:
            continue
        yield name, info


def check_end_of_archive(read_at: Callable[[int, int], bytes], offset: int, archive: str, last_member: str) -> None:
    """Raise unless a zero block (the end-of-archive marker) sits at ``offset``.

    Why: tarfile stops quietly, as if at the end, when a header after the first member is
    truncated or corrupt. A complete archive has a zero block exactly where it stopped.
    """
    block = read_at(offset, 512)
    if len(block) < 512 or block.count(0) != 512:
        state = "truncated" if len(block) < 512 else "corrupt"
        after = f"after member {last_member!r}" if last_member else "near its start"
        raise DataFormatError(f"{archive}: archive is {state} at byte {offset} {after} "
                              "(no valid header or end-of-archive marker)")
