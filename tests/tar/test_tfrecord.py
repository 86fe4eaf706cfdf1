"""TFRecord framing (length + masked CRC32C) and tf.train.Example protobuf encoding, without TensorFlow."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concurrent_dataloader import DataFormatError, DataLoader
from concurrent_dataloader.formats.tfrecord import (Example, TFRecordDataset, TFRecordWriter, decode_example,
                                                    encode_example, masked_crc32c, read_tfrecords)


def test_example_encoding_matches_the_protobuf_wire_format():
    # Example{features{feature{key:"a" value{int64_list{value:[1]}}}}}, worked out by hand from
    # the .proto: field 1 (LEN) everywhere, Feature.int64_list is field 3, packed varints.
    assert encode_example({"a": 1}) == bytes.fromhex("0a0c" "0a0a" "0a0161" "1205" "1a03" "0a0101")
    # BytesList is Feature field 1, FloatList field 2 (packed little-endian float32)
    assert encode_example({"b": b"xy"}) == bytes.fromhex("0a0d0a0b0a0162" "1206" "0a04" "0a027879")
    assert encode_example({"f": 1.0}) == bytes.fromhex("0a0f0a0d0a0166" "1208" "1206" "0a04" "0000803f")
    # negative int64: ten-byte two's complement varint
    assert encode_example({"n": -1})[-10:] == b"\xff" * 9 + b"\x01"


def test_decoder_accepts_unpacked_scalars_and_skips_unknown_fields():
    int64_list = b"\x08\x05\x08\x07"  # value: 5, value: 7 (unpacked varints)
    feature = b"\x1a" + bytes([len(int64_list)]) + int64_list
    entry = b"\x0a\x01k" + b"\x12" + bytes([len(feature)]) + feature
    unknown = b"\x10\x2a"  # field 2, varint 42: not part of Features
    features = b"\x0a" + bytes([len(entry)]) + entry + unknown
    example = b"\x0a" + bytes([len(features)]) + features + b"\x1a\x00"
    assert decode_example(example) == {"k": [5, 7]}
    floats = b"\x0d" + struct.pack("<f", 2.5) + b"\x0d" + struct.pack("<f", -1.0)  # unpacked fixed32
    feature = b"\x12" + bytes([len(floats)]) + floats
    entry = b"\x0a\x01f" + b"\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    assert decode_example(b"\x0a" + bytes([len(features)]) + features) == {"f": [2.5, -1.0]}


def test_decoder_rejects_truncated_messages():
    data = encode_example({"image_raw": b"x" * 50, "label": 3})
    with pytest.raises(DataFormatError, match="truncated"):
        decode_example(data[:-5])


int64s = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
float32s = st.floats(width=32, allow_nan=False)
names = st.text(min_size=1, max_size=12)
values = st.one_of(int64s, st.lists(int64s, min_size=1, max_size=5), float32s, st.lists(float32s, min_size=1, max_size=5),
                   st.binary(max_size=40), st.lists(st.binary(max_size=10), min_size=1, max_size=4))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(names, values, max_size=6))
def test_example_round_trip(features):
    decoded = decode_example(encode_example(features))
    assert decoded == {k: v if isinstance(v, list) else [v] for k, v in features.items()}
    assert Example.FromString(Example(features).SerializeToString()) == Example(decoded)


def test_encode_rejects_mixed_or_unknown_types():
    with pytest.raises(TypeError, match="mixed"):
        encode_example({"x": [1, b"a"]})
    with pytest.raises(TypeError, match="cannot encode"):
        encode_example({"x": object()})
    with pytest.raises(OverflowError):
        encode_example({"x": 1 << 63})


def test_crc32c_is_castagnoli_and_masked():
    import crc32c

    assert crc32c.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _write(path, records):
    with TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
    return path


def test_framing_round_trip_and_layout(tmp_path):
    records = [b"", b"a", encode_example({"label": 7}), b"z" * 1000]
    path = _write(tmp_path / "x.tfrecord", records)
    assert list(read_tfrecords(path)) == records
    raw = path.read_bytes()
    # first record: length 0, masked CRC of the 8 length bytes, no data, masked CRC of b""
    assert raw[:8] == struct.pack("<Q", 0)
    assert raw[8:12] == struct.pack("<I", masked_crc32c(struct.pack("<Q", 0)))
    assert raw[12:16] == struct.pack("<I", masked_crc32c(b""))
    assert len(raw) == sum(16 + len(r) for r in records)
    assert list(read_tfrecords(raw)) == records  # bytes work too


def test_crc_corruption_is_detected(tmp_path):
    records = [b"first record", b"second record", b"third record"]
    raw = _write(tmp_path / "ok.tfrecord", records).read_bytes()
    second = 16 + len(records[0])
    bad_data = bytearray(raw)
    bad_data[second + 12 + 3] ^= 0x01  # one bit inside the second record's data
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(bytes(bad_data))
    got = []
    with pytest.raises(DataFormatError, match=rf"bad\.tfrecord: record 1 at byte {second}: data CRC mismatch"):
        for r in read_tfrecords(path):
            got.append(r)
    assert got == [records[0]]
    assert len(list(read_tfrecords(path, verify=False))) == 3  # verify=False reads it anyway
    bad_len = bytearray(raw)
    bad_len[second] ^= 0x04
    with pytest.raises(DataFormatError, match="record 1 .*length CRC mismatch"):
        list(read_tfrecords(bytes(bad_len)))
    with pytest.raises(DataFormatError, match="record 2 .*truncated"):
        list(read_tfrecords(raw[:-3]))


def test_writer_is_atomic(tmp_path):
    target = tmp_path / "out.tfrecord"
    with pytest.raises(RuntimeError):
        with TFRecordWriter(target) as w:
            w.write(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    _write(target, [b"old"])
    with pytest.raises(RuntimeError):
        with TFRecordWriter(target) as w:
            w.write(b"new")
            raise RuntimeError("boom")
    assert list(read_tfrecords(target)) == [b"old"] and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_tfrecord_dataset_splits_files_across_workers(tmp_path, num_workers):
    files = [_write(tmp_path / f"{i}.tfrecord", [encode_example({"i": i * 10 + k}) for k in range(3)]) for i in range(3)]
    ds = TFRecordDataset(files).map(lambda r: decode_example(r)["i"][0]) if num_workers == 0 else \
        TFRecordDataset(files, parser=_first_i)
    with DataLoader(ds, batch_size=None, num_workers=num_workers) as loader:
        got = sorted(int(x) for x in loader)
    assert got == [i * 10 + k for i in range(3) for k in range(3)]


def _first_i(record):
    return decode_example(record)["i"][0]
