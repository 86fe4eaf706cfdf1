"""TFRecord files of ``tf.train.Example`` records, written and read without TensorFlow.

Why hand-written: the seed (AIS tar2tf) needed TensorFlow only to serialize a handful of
fields. The wire format is small and stable, so we encode it directly:

* **Framing** (per record): ``uint64 length`` (little endian), ``uint32 masked_crc32c(length
  bytes)``, ``data``, ``uint32 masked_crc32c(data)``. The CRC is CRC-32C (Castagnoli) from the
  maintained ``crc32c`` package, masked as ``((crc >> 15) | (crc << 17)) + 0xa282ead8``.
* **Payload**: protobuf encoding of ``tf.train.Example``::

      Example   { Features features = 1; }
      Features  { map<string, Feature> feature = 1; }
      Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                               Int64List int64_list = 3; } }
      BytesList { repeated bytes value = 1; }
      FloatList { repeated float value = 1 [packed = true]; }
      Int64List { repeated int64 value = 1 [packed = true]; }

  The decoder also accepts unpacked repeated scalars and skips unknown fields, as protobuf does.

Files written here are read by ``tf.data.TFRecordDataset`` and ``tf.io.parse_single_example``,
and files TensorFlow wrote are read by :func:`read_tfrecords` / :func:`decode_example`,
including files written with TensorFlow's ``compression_type="GZIP"`` or ``"ZLIB"``: the reader
recognises them by their first bytes (when they are not a valid uncompressed record header: a
gzip magic ``1f 8b``, or a zlib header) and decompresses while it reads.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

from torch.utils.data import IterableDataset, get_worker_info

from .._atomic import AtomicFile
from ..errors import DataFormatError

__all__ = [
    "Example",
    "TFRecordWriter",
    "TFRecordDataset",
    "read_tfrecords",
    "encode_example",
    "decode_example",
    "masked_crc32c",
]

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
# Wire types.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _crc32c(data: bytes | memoryview) -> int:
    import crc32c

    return crc32c.crc32c(data)


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC-32C: the mask keeps a CRC of data that itself contains CRCs robust."""
    crc = _crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


# --------------------------------------------------------------------------- protobuf encoding
def _varint(value: int) -> bytes:
    value &= _U64  # negative int64 is encoded as its 64-bit two's complement (10 bytes)
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _len_field(field: int, payload: bytes) -> bytes:
    return _tag(field, _LEN) + _varint(len(payload)) + payload


def _feature_bytes(name: str, value: Any) -> bytes:
    """Encode one feature value; the list kind is chosen from the Python type of the values."""
    if isinstance(value, (bytes, bytearray, memoryview, str)) or not isinstance(value, Iterable):
        values = [value]
    else:
        values = list(value)
    kinds = set()
    for v in values:
        if isinstance(v, (bytes, bytearray, memoryview, str)):
            kinds.add("bytes")
        elif isinstance(v, float) or type(v).__name__.startswith("float"):
            kinds.add("float")
        elif isinstance(v, int) or type(v).__name__.startswith(("int", "uint", "bool")):
            kinds.add("int64")
        else:
            raise TypeError(f"feature {name!r}: cannot encode a {type(v).__name__} (want bytes/str, int or float)")
    if len(kinds) > 1:
        raise TypeError(f"feature {name!r}: mixed value types {sorted(kinds)}; one feature holds one kind")
    kind = kinds.pop() if kinds else "int64"
    if kind == "bytes":
        body = b"".join(_len_field(1, v.encode("utf-8") if isinstance(v, str) else bytes(v)) for v in values)
        return _len_field(1, body)
    if kind == "float":
        packed = struct.pack(f"<{len(values)}f", *(float(v) for v in values))
        return _len_field(2, _len_field(1, packed) if values else b"")
    for v in values:
        if not -(1 << 63) <= int(v) < (1 << 63):
            raise OverflowError(f"feature {name!r}: {int(v)} does not fit in int64")
    packed = b"".join(_varint(int(v)) for v in values)
    return _len_field(3, _len_field(1, packed) if values else b"")


def encode_example(features: Mapping[str, Any]) -> bytes:
    """Serialize a ``tf.train.Example`` from ``{name: value or list of values}``.

    ``bytes``/``str`` become a BytesList, ``int``/``bool`` an Int64List, ``float`` a FloatList.
    Keys are written in sorted order so the same features always give the same bytes.
    """
    entries = b"".join(
        _len_field(1, _len_field(1, str(name).encode("utf-8")) + _len_field(2, _feature_bytes(name, features[name])))
        for name in sorted(features)
    )
    return _len_field(1, entries)


# --------------------------------------------------------------------------- protobuf decoding
def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise DataFormatError("truncated varint in protobuf message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DataFormatError("varint longer than 10 bytes in protobuf message")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for each field; LEN values are memoryviews."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _I64:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == _LEN:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == _I32:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise DataFormatError(f"unsupported protobuf wire type {wire} (field {field})")
        if pos > len(buf):
            raise DataFormatError(f"truncated protobuf field {field}")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


def _decode_feature(buf: memoryview) -> list:
    values: list = []
    for kind, wire, payload in _fields(buf):
        if wire != _LEN:
            continue
        if kind == 1:  # BytesList
            values = [bytes(v) for f, w, v in _fields(payload) if f == 1 and w == _LEN]
        elif kind == 2:  # FloatList, packed or not
            values = []
            for f, w, v in _fields(payload):
                if f != 1:
                    continue
                if w == _LEN:
                    if len(v) % 4:
                        raise DataFormatError("FloatList payload is not a multiple of 4 bytes")
                    values.extend(struct.unpack(f"<{len(v) // 4}f", v))
                elif w == _I32:
                    values.append(struct.unpack("<f", v)[0])
        elif kind == 3:  # Int64List, packed or not
            values = []
            for f, w, v in _fields(payload):
                if f != 1:
                    continue
                if w == _LEN:
                    pos = 0
                    while pos < len(v):
                        x, pos = _read_varint(v, pos)
                        values.append(_signed64(x))
                elif w == _VARINT:
                    values.append(_signed64(v))
    return values


def decode_example(data: bytes | memoryview) -> dict[str, list]:
    """Parse a serialized ``tf.train.Example`` into ``{name: list of values}``.

    BytesList values are ``bytes``, Int64List ``int``, FloatList ``float``.
    """
    buf = memoryview(data)
    out: dict[str, list] = {}
    for field, wire, features in _fields(buf):
        if field != 1 or wire != _LEN:
            continue
        for f, w, entry in _fields(features):
            if f != 1 or w != _LEN:
                continue
            name, value = None, memoryview(b"")
            for ef, ew, ev in _fields(entry):
                if ef == 1 and ew == _LEN:
                    try:
                        name = bytes(ev).decode("utf-8")
                    except UnicodeDecodeError:
                        raise DataFormatError(f"Example feature name {bytes(ev)[:40]!r} is not UTF-8") from None
                elif ef == 2 and ew == _LEN:
                    value = ev
            if name is None:
                raise DataFormatError("Example feature map entry without a key")
            out[name] = _decode_feature(value)
    return out


class Example:
    """A ``tf.train.Example``-like holder so seed code calling ``SerializeToString()`` keeps working."""

    __slots__ = ("features",)

    def __init__(self, features: Mapping[str, Any] | None = None) -> None:
        self.features = dict(features or {})

    def SerializeToString(self) -> bytes:  # noqa: N802 (protobuf's name)
        return encode_example(self.features)

    @classmethod
    def FromString(cls, data: bytes) -> "Example":  # noqa: N802
        return cls(decode_example(data))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Example) and self.features == other.features

    def __repr__(self) -> str:
        return f"Example({sorted(self.features)})"


def _as_record_bytes(value: Any) -> bytes:
    """What a ``record_to_example`` function may return: bytes, an Example-like, or a features dict."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    serialize = getattr(value, "SerializeToString", None)
    if callable(serialize):
        return serialize()
    if isinstance(value, Mapping):
        return encode_example(value)
    raise TypeError(f"expected bytes, an Example or a features dict, got {type(value).__name__}")


# --------------------------------------------------------------------------- framing
class TFRecordWriter:
    """Writes records to ``path`` atomically: a temp file next to it, renamed on ``close()``.

    If the ``with`` block raises, the temp file is removed and ``path`` is left untouched, so a
    reader never sees a half-written file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._atomic = AtomicFile(self.path, "wb", fsync=True)  # NOTE: the file's mode follows the umask
        self._file: BinaryIO | None = self._atomic.file
        self.records = 0
        self.bytes_written = 0

    def write(self, record: Any) -> None:
        """Write one record: bytes, an :class:`Example`, or a features dict."""
        if self._file is None:
            raise ValueError(f"TFRecordWriter for {self.path} is closed")
        data = _as_record_bytes(record)
        header = struct.pack("<Q", len(data))
        frame = b"".join((header, struct.pack("<I", masked_crc32c(header)), data,
                          struct.pack("<I", masked_crc32c(data))))
        self._file.write(frame)
        self.records += 1
        self.bytes_written += len(frame)

    def close(self) -> None:
        """Flush, fsync and rename into place."""
        if self._file is None:
            return
        self._file = None
        self._atomic.commit()

    def abort(self) -> None:
        """Discard what was written; ``path`` is not touched."""
        self._file = None
        self._atomic.discard()

    def __enter__(self) -> "TFRecordWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


_CHUNK = 16 << 20

# The largest record we read: a length field above it is refused before anything is allocated,
# so a corrupt or hostile file (a compressed one can expand far beyond its size on disk) cannot
# make a reader allocate gigabytes. Image records are far smaller; pass ``max_record_bytes`` to
# read bigger ones.
MAX_RECORD_BYTES = 256 << 20


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes (fewer at end of file). Reads in chunks, so a corrupt header that claims
    a huge length costs what the file really holds, not an allocation of that length."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        more = f.read(min(n - got, _CHUNK))
        if not more:
            break
        parts.append(more)
        got += len(more)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``f``: puts back the bytes read to detect compression."""

    def __init__(self, head: bytes, f: BinaryIO) -> None:
        self._head, self._f = head, f

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._f.read(len(b))
        b[:len(data)] = data
        return len(data)


class _ZlibReader(io.RawIOBase):
    """A zlib stream (TensorFlow's ``"ZLIB"`` compression), decompressed while it is read."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self._z, self._buf = f, zlib.decompressobj(), b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf and not self._z.eof:
            chunk = self._f.read(1 << 16)
            self._buf = self._z.decompress(chunk) if chunk else self._z.flush()
            if not chunk:
                if not self._z.eof:
                    raise EOFError("compressed stream ended before the end-of-stream marker")
                break
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _detect_compression(head: bytes) -> str:
    """``""``, ``"gzip"`` or ``"zlib"`` from a file's first 12 bytes. A valid uncompressed record
    header wins (its length could start with any bytes); otherwise the magic bytes decide."""
    if len(head) == 12 and struct.unpack("<I", head[8:])[0] == masked_crc32c(head[:8]):
        return ""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib"
    return ""


def read_tfrecords(source: str | os.PathLike | BinaryIO | bytes, verify: bool = True,
                   name: str | None = None, max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[bytes]:
    """Yield the records of a TFRecord file (path, binary file object or bytes), uncompressed or
    compressed with GZIP or ZLIB (detected from the first bytes, as TensorFlow writes them).

    With ``verify`` (the default) both CRCs of every record are checked; a mismatch or a
    truncated record raises :class:`DataFormatError` naming the file, record number and offset
    (in the uncompressed stream for a compressed file).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield from read_tfrecords(io.BytesIO(bytes(source)), verify, name or "<bytes>", max_record_bytes)
        return
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            yield from read_tfrecords(f, verify, name or str(source), max_record_bytes)
        return
    f = source
    name = name or getattr(f, "name", "<stream>")
    head = _read_exact(f, 12)
    compression = _detect_compression(head)
    rest = io.BufferedReader(_Prefixed(head, f), _CHUNK)
    if compression == "gzip":
        stream: BinaryIO = gzip.GzipFile(fileobj=rest, mode="rb")  # type: ignore[assignment]
    elif compression == "zlib":
        stream = io.BufferedReader(_ZlibReader(rest), _CHUNK)  # type: ignore[assignment]
    else:
        stream = rest  # type: ignore[assignment]
    try:
        yield from _read_frames(stream, verify, name, compression, max_record_bytes)
    except (OSError, EOFError, zlib.error) as exc:
        if not compression or isinstance(exc, DataFormatError):
            raise
        raise DataFormatError(f"{name}: {compression}-compressed TFRecord file is corrupt or truncated "
                              f"({type(exc).__name__}: {exc})") from None


def _read_frames(f: BinaryIO, verify: bool, name: str, compression: str,
                 max_record_bytes: int) -> Iterator[bytes]:
    number, offset = 0, 0
    kind = f" ({compression}-compressed; offsets are uncompressed)" if compression else ""
    while True:
        header = _read_exact(f, 12)
        if not header:
            return
        where = f"{name}: record {number} at byte {offset}{kind}"
        if len(header) < 12:
            raise DataFormatError(f"{where}: truncated header ({len(header)} of 12 bytes)")
        (length,) = struct.unpack("<Q", header[:8])
        if verify and struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
            raise DataFormatError(f"{where}: length CRC mismatch (corrupt file or not a TFRecord file)")
        if length > max_record_bytes:
            raise DataFormatError(f"{where}: record of {length} bytes is over max_record_bytes={max_record_bytes}")
        data = _read_exact(f, length)
        footer = _read_exact(f, 4)
        if len(data) < length or len(footer) < 4:
            raise DataFormatError(f"{where}: truncated record (wanted {length} bytes)")
        if verify and struct.unpack("<I", footer)[0] != masked_crc32c(data):
            raise DataFormatError(f"{where}: data CRC mismatch (corrupt record)")
        yield data
        number += 1
        offset += 16 + length


class TFRecordDataset(IterableDataset):
    """Streams records of one or more TFRecord files, optionally through ``parser``.

    Files are split across DataLoader workers (file ``i`` goes to worker ``i % num_workers``),
    so each record is produced once per epoch. ``parser`` is e.g. :func:`default_record_parser`
    from :mod:`concurrent_dataloader.formats.shards`.
    """

    def __init__(self, filenames: str | os.PathLike | Sequence[str | os.PathLike],
                 parser: Callable[[bytes], Any] | None = None, verify: bool = True) -> None:
        self.filenames = [filenames] if isinstance(filenames, (str, os.PathLike)) else list(filenames)
        self.parser = parser
        self.verify = verify

    def map(self, parser: Callable[[bytes], Any]) -> "TFRecordDataset":
        """``tf.data``-style: a copy whose records go through ``parser``."""
        return TFRecordDataset(self.filenames, parser, self.verify)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        files = self.filenames if info is None else self.filenames[info.id::info.num_workers]
        for path in files:
            for record in read_tfrecords(path, self.verify):
                yield self.parser(record) if self.parser is not None else record
