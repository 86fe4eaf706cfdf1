"""Fuzzing every parser we own with random and mutated bytes (hypothesis).

Each input is either parsed or rejected with one of our error types
(:class:`~concurrent_dataloader.errors.ConcurrentDataLoaderError`: ``DataFormatError``,
``ConfigError``... all ``ValueError``/``OSError`` subclasses). Nothing may raise another exception
type, take more than a few seconds, or allocate more than a bounded amount of memory (traced with
``tracemalloc``). The default run uses ~100 examples per parser; ``-m slow`` runs thousands.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from concurrent_dataloader.datasets.files import (
    compute_labels,
    load_credential_file,
    parse_classes,
    parse_index,
    read_json,
)
from concurrent_dataloader.errors import ConcurrentDataLoaderError
from concurrent_dataloader.formats.converted import open_converted
from concurrent_dataloader.formats.converted.base import parse_metadata
from concurrent_dataloader.formats.shards import iter_records, split_key
from concurrent_dataloader.formats.tar_archive import ImageArchive, load_labels_file
from concurrent_dataloader.formats.tfrecord import TFRecordWriter, decode_example, encode_example, read_tfrecords
from tests.reliability.helpers import FIGURES, SECRET, jpeg

_COMMON = dict(deadline=None, database=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                      HealthCheck.data_too_large])
FAST = settings(max_examples=100, **_COMMON)
BIG = settings(max_examples=2000, **{**_COMMON, "derandomize": False})
MAX_SECONDS = 5.0
MAX_BYTES = 64 << 20
FUZZ_STATS = FIGURES  # fuzz_inputs / fuzz_parsed / fuzz_rejected, printed at the end of the run


def bounded(fn, *args, **kwargs):
    """Run a parser on one input: returns its result or None when it rejected the input with our
    error type; anything else (another exception type, too slow, too much memory) fails."""
    FUZZ_STATS["fuzz_inputs"] += 1
    tracemalloc.start()
    start = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown keys, index rebuilds...: warnings are fine
            result = fn(*args, **kwargs)
        FUZZ_STATS["fuzz_parsed"] += 1
        return result
    except ConcurrentDataLoaderError as exc:
        assert str(exc), "an error without a message"
        assert SECRET not in str(exc)
        FUZZ_STATS["fuzz_rejected"] += 1
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        elapsed = time.monotonic() - start
        assert elapsed < MAX_SECONDS, f"{getattr(fn, '__name__', fn)} took {elapsed:.1f} s"
        assert peak < MAX_BYTES, f"{getattr(fn, '__name__', fn)} allocated {peak / 2**20:.0f} MiB"


@st.composite
def mutated(draw, seed: bytes, max_ops: int = 6):
    """``seed`` with a few byte flips, insertions, deletions, truncation or duplication."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup", "interesting"]))
        pos = draw(st.integers(0, max(0, len(data))))
        if op == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup" and data:
            chunk = data[pos:pos + draw(st.integers(1, 64))]
            data[pos:pos] = chunk
        elif op == "interesting" and len(data) >= 8:
            i = min(pos, len(data) - 8)
            data[i:i + 8] = draw(st.sampled_from([b"\xff" * 8, b"\x00" * 8, struct.pack("<q", -1),
                                                  struct.pack("<Q", 2**63), b"NaN\x00\x00\x00\x00\x00",
                                                  b"1e999999", b"[[[[[[[["]))
    return bytes(data)


def json_values(max_leaves: int = 12):
    scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
               | st.text(max_size=20))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                              max_size=4),
                        max_leaves=max_leaves)


def bytes_or_mutation(seed: bytes):
    return st.one_of(st.binary(max_size=512), mutated(seed))


# ----------------------------------------------------------------------------------- JSON files
VALID_INDEX = json.dumps(["train/n01440764/n01440764_1.JPEG", "train/n01443537/n01443537_2.JPEG"]).encode()
VALID_CLASSES = json.dumps({"n01440764": {"id": 0, "name": "tench"}, "n01443537": {"id": 1, "name": "goldfish"}}).encode()
VALID_VAL_CLASSES = json.dumps({"0": 0, "1": 1}).encode()
VALID_CREDS = json.dumps({"aws_access_key_id": "AKIAFUZZ00001", "aws_secret_access_key": SECRET,
                          "bucket_name": "bkt", "endpoint_url": "http://127.0.0.1:9",
                          "train_index_file_download_url": "s3://bkt/index.json"}).encode()


def _index_and_labels(path: str, classes_raw: bytes | None) -> list:
    index = parse_index(read_json(path, "index"), path)
    if classes_raw is not None:
        classes = parse_classes(json.loads(classes_raw), "classes.json")
        compute_labels(index, classes, path)
    return index


def check_index_file(tmp: Path, raw: bytes) -> None:
    p = tmp / "index.json"
    p.write_bytes(raw)
    result = bounded(_index_and_labels, str(p), VALID_CLASSES)
    if result is not None:
        assert isinstance(result, list) and all(isinstance(k, str) and k.strip() for k in result)


def check_classes_file(tmp: Path, raw: bytes) -> None:
    p = tmp / "classes.json"
    p.write_bytes(raw)

    def parse():
        return parse_classes(read_json(p, "classes"), str(p))

    classes = bounded(parse)
    if classes is not None:
        bounded(compute_labels, json.loads(VALID_INDEX), classes, "index.json")


def check_credential_file(tmp: Path, raw: bytes) -> None:
    p = tmp / "creds.json"
    p.write_bytes(raw)
    creds = bounded(load_credential_file, p)
    if creds is not None:
        assert SECRET not in repr(creds) and SECRET not in str(creds)


@FAST
@given(raw=bytes_or_mutation(VALID_INDEX))
def test_fuzz_index_json(tmp_path, raw):
    check_index_file(tmp_path, raw)


@FAST
@given(value=json_values())
def test_fuzz_index_and_classes_structures(value):
    """Well-formed JSON of every shape: type confusion must still end in DataFormatError."""
    bounded(parse_index, value, "index.json")
    classes = bounded(parse_classes, value, "classes.json")
    if classes is not None:
        bounded(compute_labels, ["a/n0_1.JPEG", "b/x.JPEG"], classes, "index.json")


@FAST
@given(raw=st.one_of(bytes_or_mutation(VALID_CLASSES), mutated(VALID_VAL_CLASSES)))
def test_fuzz_classes_json(tmp_path, raw):
    check_classes_file(tmp_path, raw)


@FAST
@given(raw=bytes_or_mutation(VALID_CREDS))
def test_fuzz_credential_json(tmp_path, raw):
    check_credential_file(tmp_path, raw)


def test_json_parsers_survive_deep_nesting_and_huge_numbers(tmp_path):
    """Inputs that make ``json.loads`` itself raise RecursionError or a digit-limit ValueError."""
    for raw in (b"[" * 100_000 + b"]" * 100_000, b"[" + b"9" * 5000 + b"]", b'{"a": ' * 50_000):
        check_index_file(tmp_path, raw)
        check_classes_file(tmp_path, raw)
        check_credential_file(tmp_path, raw)
        bounded(parse_metadata, raw, "metadata.json")


@pytest.mark.slow
@BIG
@given(raw=st.one_of(bytes_or_mutation(VALID_INDEX), bytes_or_mutation(VALID_CLASSES), bytes_or_mutation(VALID_CREDS)))
def test_fuzz_json_files_big(tmp_path, raw):
    check_index_file(tmp_path, raw)
    check_classes_file(tmp_path, raw)
    check_credential_file(tmp_path, raw)


# ----------------------------------------------------------------------------------- tar index table
def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


MEMBERS = [(f"train/c{i % 2}/img_{i}.jpg", jpeg(i, (8, 8))) for i in range(6)]
MEMBER_BYTES = dict(MEMBERS)


@pytest.fixture(scope="module")
def indexed_archive(tmp_path_factory):
    """A small tar with its index built once: (archive bytes, .idx.npy bytes, .idx.json record)."""
    d = tmp_path_factory.mktemp("archive")
    (d / "a.tar").write_bytes(_tar_bytes(MEMBERS))
    ImageArchive(d / "a.tar", progress=False)
    return d, (d / "a.idx.npy").read_bytes(), json.loads((d / "a.idx.json").read_bytes())


def _npy(table: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, table, allow_pickle=False)
    return buf.getvalue()


def check_archive_index(src: Path, npy: bytes, record: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        shutil.copy2(src / "a.tar", d / "a.tar")  # keeps the mtime the record's fingerprint names
        (d / "a.idx.npy").write_bytes(npy)
        (d / "a.idx.json").write_bytes(record)
        ds = bounded(ImageArchive, d / "a.tar", progress=False)
        if ds is None:
            return
        size = (d / "a.tar").stat().st_size
        assert 0 < len(ds) <= len(MEMBERS)
        for i in range(len(ds)):
            off, n = int(ds._offsets[i]), int(ds._sizes[i])
            assert 0 <= off and 0 <= n and off + n <= size  # every read stays inside the archive
            data = bounded(ds.fetch_raw, i)
            assert data is None or len(data) == n
        ds.close()


def _consistent(record: dict, npy: bytes) -> bytes:
    """The record re-signed for ``npy``: what a hostile (not merely damaged) index looks like."""
    import hashlib

    return json.dumps({**record, "npy_sha256": hashlib.sha256(npy).hexdigest()}).encode()


@st.composite
def index_files(draw, npy: bytes, record: dict):
    kind = draw(st.sampled_from(["random_npy", "mutated_npy_resigned", "mutated_record", "record_values",
                                 "table_values"]))
    raw_record = json.dumps(record).encode()
    if kind == "random_npy":
        return draw(st.binary(max_size=400)), raw_record
    if kind == "mutated_npy_resigned":
        bad = draw(mutated(npy))
        return bad, _consistent(record, bad)
    if kind == "mutated_record":
        return npy, draw(mutated(raw_record, max_ops=3))
    if kind == "record_values":
        field = draw(st.sampled_from(["format", "version", "archive", "options", "names", "classes", "columns"]))
        return npy, json.dumps({**record, field: draw(json_values(6))}).encode()
    # table_values: a well-formed .npy with hostile numbers, correctly signed
    table = np.load(io.BytesIO(npy), allow_pickle=False).copy()
    rows, cols = table.shape
    for _ in range(draw(st.integers(1, 4))):
        r, c = draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))
        table[r, c] = draw(st.sampled_from([np.nan, np.inf, -1.0, -1e12, 1e15, 0.5, 2.0**63, 1e300]))
    if draw(st.booleans()):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = table.astype(draw(st.sampled_from(["<i8", "<f4", "<u2", "<U8", "|b1", "<c16"])))
    bad = _npy(table)
    return bad, _consistent(record, bad)


@given(data=st.data())
@FAST
def test_fuzz_tar_index_table(indexed_archive, data):
    src, npy, record = indexed_archive
    bad_npy, bad_record = data.draw(index_files(npy, record))
    check_archive_index(src, bad_npy, bad_record)


@pytest.mark.slow
@given(data=st.data())
@BIG
def test_fuzz_tar_index_table_big(indexed_archive, data):
    src, npy, record = indexed_archive
    check_archive_index(src, *data.draw(index_files(npy, record)))


VALID_LABELS = json.dumps({"c0/img_0.jpg": [1.0, 2.0], "c1/img_1.jpg": [3.0, 4.0]}).encode()


@FAST
@given(raw=bytes_or_mutation(VALID_LABELS), suffix=st.sampled_from([".json", ".csv"]))
def test_fuzz_tar_labels_file(tmp_path, raw, suffix):
    p = tmp_path / f"labels{suffix}"
    p.write_bytes(raw)
    labels = bounded(load_labels_file, p)
    if labels is not None:
        assert isinstance(labels, dict)


# ----------------------------------------------------------------------------------- shards
VALID_SHARD = _tar_bytes([("n01/img7.jpg", b"\xff\xd8jpegbytes"), ("n01/img7.cls", b"3"),
                          ("n02/img8.jpg", b"\xff\xd8more"), ("n02/img8.cls", b"4")])


def check_shard(raw: bytes) -> None:
    records = bounded(lambda: list(iter_records(raw, "shard-0.tar")))
    if records is not None:
        for r in records:
            assert r["__url__"] == "shard-0.tar"
            assert all(isinstance(v, bytes) for k, v in r.items() if not k.startswith("__"))


@FAST
@given(raw=st.one_of(st.binary(max_size=2048), mutated(VALID_SHARD, max_ops=4)))
def test_fuzz_shard_grouping(raw):
    check_shard(raw)


@FAST
@given(name=st.text(max_size=40))
def test_fuzz_split_key(name):
    parts = split_key(name)
    if parts is not None:
        key, ext = parts
        assert key and ext and ext == ext.lower()


@pytest.mark.slow
@BIG
@given(raw=mutated(VALID_SHARD, max_ops=8))
def test_fuzz_shard_grouping_big(raw):
    check_shard(raw)


# ----------------------------------------------------------------------------------- TFRecord
def _tfrecord_file() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.tfrecord"
        with TFRecordWriter(path) as w:
            for i in range(3):
                w.write({"image_raw": b"\x01\x02" * (i + 1), "label": i, "height": 1, "width": 2, "x": [0.5, 1.5]})
        return path.read_bytes()


VALID_TFRECORD = _tfrecord_file()
VALID_EXAMPLE = encode_example({"image_raw": b"abc", "label": 7, "w": [1.5, 2.5], "names": [b"a", b"b"]})


def check_tfrecord(raw: bytes, verify: bool) -> None:
    records = bounded(lambda: list(read_tfrecords(raw, verify=verify, name="x.tfrecord")))
    for rec in records or []:
        bounded(decode_example, rec)


@FAST
@given(raw=st.one_of(st.binary(max_size=512), mutated(VALID_TFRECORD)), verify=st.booleans())
def test_fuzz_tfrecord_reader(raw, verify):
    check_tfrecord(raw, verify)


@FAST
@given(raw=st.one_of(st.binary(max_size=256), mutated(VALID_EXAMPLE)))
def test_fuzz_tf_example_decoder(raw):
    out = bounded(decode_example, raw)
    if out is not None:
        assert isinstance(out, dict) and all(isinstance(v, list) for v in out.values())


def test_tfrecord_with_a_huge_declared_length_is_refused_without_allocating_it(tmp_path):
    """A record header may claim 2**62 bytes with a valid CRC: reading must not try to allocate it."""
    from concurrent_dataloader.formats.tfrecord import masked_crc32c

    length = struct.pack("<Q", 2**62)
    raw = length + struct.pack("<I", masked_crc32c(length)) + b"tiny"
    check_tfrecord(raw, True)
    p = tmp_path / "huge.tfrecord"
    p.write_bytes(raw)
    assert bounded(lambda: list(read_tfrecords(p))) is None


@pytest.mark.slow
@BIG
@given(raw=mutated(VALID_TFRECORD, max_ops=10), verify=st.booleans())
def test_fuzz_tfrecord_big(raw, verify):
    check_tfrecord(raw, verify)


# ----------------------------------------------------------------------------------- converted formats
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tar-format and a memmap-format conversion of 6 small PNGs (4 per file)."""
    from PIL import Image

    from concurrent_dataloader.formats.converted import MemmapConverter, TarConverter

    d = tmp_path_factory.mktemp("converted")
    for i in range(6):
        (d / "src" / f"class_{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 10, 3), i * 30, np.uint8)).save(d / "src" / f"class_{i % 2}" / f"{i}.png")
    TarConverter(str(d / "src"), d / "tar", 4, 2, progress=False).convert()
    MemmapConverter(str(d / "src"), d / "mm", 4, 2, progress=False, shape=(6, 10), im_mode="RGB").convert()
    return d


def _read_all(root: Path) -> int:
    reader = open_converted(root)
    n = 0
    for i in range(len(reader)):
        reader[i]
        n += 1
    return n


def check_converted_file(src: Path, fmt: str, rel: str, raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / fmt
        shutil.copytree(src / fmt, root)
        (root / rel).write_bytes(raw)
        n = bounded(_read_all, root)
        assert n is None or n <= 10**6


CONVERTED_FILES = [("tar", "metadata/metadata.json"), ("mm", "metadata/metadata.json"),
                   ("tar", "metadata/tar_index/images_0.json"), ("tar", "labels/labels_1.json"),
                   ("tar", "metadata/class_to_integer_mapping.json"), ("mm", "labels/labels_0.npy")]


@given(data=st.data(), which=st.sampled_from(CONVERTED_FILES))
@FAST
def test_fuzz_converted_metadata(converted, data, which):
    fmt, rel = which
    valid = (converted / fmt / rel).read_bytes()
    raw = data.draw(st.one_of(mutated(valid), st.binary(max_size=200), _json_field_swap(valid)))
    check_converted_file(converted, fmt, rel, raw)


@given(data=st.data())
@FAST
def test_fuzz_converted_npy_header(converted, data):
    """Our readers also accept real NPY files (not only the seed's raw arrays): fuzz that header
    parser with mutations of a valid NPY labels file."""
    raw_labels = np.frombuffer((converted / "mm" / "labels" / "labels_0.npy").read_bytes(), dtype="<i8")
    buf = io.BytesIO()
    np.save(buf, raw_labels, allow_pickle=False)
    check_converted_file(converted, "mm", "labels/labels_0.npy", data.draw(mutated(buf.getvalue(), max_ops=4)))


def _json_field_swap(valid: bytes):
    try:
        obj = json.loads(valid)
    except ValueError:
        return st.just(valid)
    if not isinstance(obj, dict) or not obj:
        return json_values(6).map(lambda v: json.dumps(v).encode())
    return st.tuples(st.sampled_from(sorted(obj)), json_values(6)).map(
        lambda kv: json.dumps({**obj, kv[0]: kv[1]}).encode())


@FAST
@given(raw=bytes_or_mutation(b'{"num_images_per_array": 4, "len": 6, "len_last_array": 2, "total_num_arrays": 2}'))
def test_fuzz_parse_metadata(raw):
    meta = bounded(parse_metadata, raw, "metadata.json")
    if meta is not None:
        assert meta["len"] >= 1 and meta["num_images_per_array"] >= 1


@pytest.mark.slow
@given(data=st.data(), which=st.sampled_from(CONVERTED_FILES))
@BIG
def test_fuzz_converted_metadata_big(converted, data, which):
    fmt, rel = which
    valid = (converted / fmt / rel).read_bytes()
    check_converted_file(converted, fmt, rel, data.draw(st.one_of(mutated(valid, 10), _json_field_swap(valid))))
