"""Compressed TFRecord files (TensorFlow's GZIP and ZLIB options), made here with the gzip and
zlib modules (no TensorFlow): detected from their first bytes and read."""

from __future__ import annotations

import gzip
import io
import zlib

import pytest

from concurrent_dataloader.errors import DataFormatError
from concurrent_dataloader.formats.tfrecord import TFRecordDataset, TFRecordWriter, decode_example, read_tfrecords


def _plain(tmp_path, records) -> bytes:
    path = tmp_path / "plain.tfrecord"
    with TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
    return path.read_bytes()


RECORDS = [{"image": b"\xff\xd8" + bytes([i]) * 300, "label": i} for i in range(20)]


@pytest.mark.parametrize("compress", ["gzip", "zlib"])
def test_compressed_tfrecord_is_read(tmp_path, compress):
    plain = _plain(tmp_path, RECORDS)
    data = gzip.compress(plain) if compress == "gzip" else zlib.compress(plain)
    path = tmp_path / f"train.tfrecord.{compress}"
    path.write_bytes(data)
    for source in (path, data, io.BytesIO(data)):
        got = [decode_example(r) for r in read_tfrecords(source)]
        assert got == [decode_example(r) for r in read_tfrecords(plain)]
        assert [g["label"] for g in got] == [[i] for i in range(20)]
    assert len(list(TFRecordDataset([path]))) == 20


def test_gzip_from_a_non_seekable_stream(tmp_path):
    plain = _plain(tmp_path, RECORDS)

    class Pipe(io.RawIOBase):  # no seek, short reads: like a socket or a pipe
        def __init__(self, data):
            self.data = data

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), 7, len(self.data))
            b[:n], self.data = self.data[:n], self.data[n:]
            return n

    assert len(list(read_tfrecords(Pipe(gzip.compress(plain)), name="pipe"))) == 20


def test_plain_record_whose_length_looks_like_gzip_magic(tmp_path):
    """A plain record of 0x8b1f bytes starts with 1f 8b: its valid header CRC says it is not gzip."""
    plain = _plain(tmp_path, [b"x" * 0x8B1F])
    assert plain[:2] == b"\x1f\x8b"
    assert [len(r) for r in read_tfrecords(plain)] == [0x8B1F]


def test_corrupt_or_truncated_gzip_names_file_and_gzip(tmp_path):
    data = gzip.compress(_plain(tmp_path, RECORDS))
    path = tmp_path / "cut.tfrecord.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.tfrecord\.gz.*gzip"):
        list(read_tfrecords(path))
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    path.write_bytes(bytes(bad))
    with pytest.raises(DataFormatError, match=r"gzip"):
        list(read_tfrecords(path))


def test_gzip_of_garbage_is_a_tfrecord_error(tmp_path):
    path = tmp_path / "notrecords.gz"
    path.write_bytes(gzip.compress(b"this is not a tfrecord file at all"))
    with pytest.raises(DataFormatError, match=r"notrecords\.gz: record 0 .*gzip-compressed"):
        list(read_tfrecords(path))


def test_a_gzip_bomb_record_is_refused_before_it_is_read(tmp_path):
    """A valid header that claims a huge record (a gzip file expands far beyond its size on disk)
    is refused by its length, naming the file and record, instead of allocating that many bytes."""
    import struct

    from concurrent_dataloader.formats.tfrecord import masked_crc32c

    length = 1 << 40  # 1 TiB
    head = struct.pack("<Q", length)
    frame = head + struct.pack("<I", masked_crc32c(head)) + b"\0" * 1024
    path = tmp_path / "bomb.tfrecord.gz"
    path.write_bytes(gzip.compress(frame))
    with pytest.raises(DataFormatError, match=r"bomb\.tfrecord\.gz: record 0 .*max_record_bytes"):
        list(read_tfrecords(path))
    small = tmp_path / "small.tfrecord"
    with TFRecordWriter(small) as w:
        w.write(b"x" * 100)
    assert list(read_tfrecords(small, max_record_bytes=100)) == [b"x" * 100]
    with pytest.raises(DataFormatError, match="max_record_bytes=99"):
        list(read_tfrecords(small, max_record_bytes=99))
