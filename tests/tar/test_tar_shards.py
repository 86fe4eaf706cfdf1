"""Tar shards: brace templates, WebDataset grouping, streaming with worker/rank splitting,
concurrent downloads, and the seed's load_from_tar (in memory and to TFRecord)."""

from __future__ import annotations

import collections
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.tar.helpers import jpeg, pixels, tar_bytes, write_tar

from concurrent_dataloader import DataFormatError, DataLoader
from concurrent_dataloader.formats.shards import (AisDataset, ImageRecordDecoder, TarShardDataset, TarShardSource,
                                                  default_record_parser, default_record_to_pair, expand_template,
                                                  iter_records, split_key)
from concurrent_dataloader.formats.tfrecord import TFRecordDataset, decode_example, read_tfrecords
from concurrent_dataloader.storage import LocalStore

N_SHARDS = 10


def shard_members(s: int, n: int) -> list[tuple[str, bytes]]:
    out = []
    for k in range(n):
        key = f"s{s:02d}/{k:03d}"
        out += [(f"{key}.jpg", jpeg(s * 100 + k, size=(16, 12))), (f"{key}.cls", str((s + k) % 5).encode())]
    return out


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """10 shards with 1..5 records each (uneven on purpose); odd shards are gzip-compressed."""
    root = tmp_path_factory.mktemp("shards")
    keys = []
    for s in range(N_SHARDS):
        n = 1 + s % 5
        write_tar(root / f"train-{s:03d}.tar", shard_members(s, n), "gzip" if s % 2 else None)
        keys += [f"s{s:02d}/{k:03d}" for k in range(n)]
    return root, keys


@pytest.fixture
def s3_shards(shard_dir, s3_client, s3_bucket):
    root, keys = shard_dir
    for p in sorted(root.glob("*.tar")):
        s3_client.put_object(Bucket=s3_bucket, Key=f"shards/{p.name}", Body=p.read_bytes())
    return s3_bucket, keys


def test_brace_templates():
    assert expand_template("train-{0..3}.tar") == [f"train-{i}.tar" for i in range(4)]
    assert expand_template("shard-{000..011}.tar")[-2:] == ["shard-010.tar", "shard-011.tar"]
    assert expand_template("x-{0..10..5}.tar") == ["x-0.tar", "x-5.tar", "x-10.tar"]
    assert expand_template("{a,b}/p-{0..1}-{00..01}.tgz") == [
        f"{d}/p-{i}-{j:02d}.tgz" for d in "ab" for i in range(2) for j in range(2)]
    assert expand_template(["a-{1..2}.tar", "b.tar"]) == ["a-1.tar", "a-2.tar", "b.tar"]


def test_webdataset_grouping():
    assert split_key("dir/sub/img7.seg.PNG") == ("dir/sub/img7", "seg.png")
    assert split_key("README") is None and split_key("dir/.hidden") is None
    data = tar_bytes([("a/x.jpg", b"1"), ("a/x.cls", b"2"), ("a/x.seg.png", b"3"), ("a/y.JPG", b"4"),
                      ("NOTES", b"skipped"), ("dir", None), ("b/x.jpg", b"5")])
    records = list(iter_records(data, "s.tar"))
    assert [r["__key__"] for r in records] == ["a/x", "a/y", "b/x"]
    assert records[0] == {"__key__": "a/x", "__url__": "s.tar", "jpg": b"1", "cls": b"2", "seg.png": b"3"}
    assert records[1]["jpg"] == b"4"
    with pytest.raises(DataFormatError, match=r"s\.tar: record 'a/x' has two members with extension 'jpg'"):
        list(iter_records(tar_bytes([("a/x.jpg", b"1"), ("a/x.JPG", b"2")]), "s.tar"))


@pytest.mark.parametrize("kind", [None, "gzip", "bz2", "xz"])
def test_plain_and_compressed_shards_read_the_same(tmp_path, kind):
    members = shard_members(0, 3)
    path = write_tar(tmp_path / "s.tar", members, kind)
    records = list(iter_records(path.read_bytes(), "s.tar"))
    assert [r["jpg"] for r in records] == [d for n, d in members if n.endswith(".jpg")]


def test_truncated_corrupt_and_hostile_shards(tmp_path):
    data = tar_bytes(shard_members(0, 3))
    infos = [m for m in tarfile.open(fileobj=__import__("io").BytesIO(data)) if m.isfile()]
    for cut in (infos[1].offset_data + 5, infos[3].offset + 200, infos[-1].offset_data + infos[-1].size + 512 + 10):
        with pytest.raises(DataFormatError, match=r"cut\.tar.*(truncated|corrupt)"):
            list(iter_records(data[:cut], "cut.tar"))
    bad = bytearray(data)
    bad[infos[2].offset + 100:infos[2].offset + 104] = b"oops"
    with pytest.raises(DataFormatError, match=r"bad\.tar: archive is corrupt"):
        list(iter_records(bytes(bad), "bad.tar"))
    with pytest.raises(DataFormatError, match="not a tar shard|cannot read"):
        list(iter_records(b"this is not a tar file at all" * 30, "junk.tar"))
    hostile = tar_bytes([("../../x.jpg", b"1"), ("/abs/y.jpg", b"2"), ("ok/z.jpg", b"3"),
                         ("ok/l.jpg", None, tarfile.SYMTYPE, "/etc/passwd")])
    with pytest.warns(RuntimeWarning) as record:
        records = list(iter_records(hostile, "h.tar"))
    assert [r["__key__"] for r in records] == ["ok/z"]
    assert any("path traversal" in str(w.message) for w in record)


def _keys(loader) -> list[str]:
    return [r["__key__"] for r in loader]


def _key_only(record):
    return record["__key__"]


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_two_ranks_two_workers_cover_every_record_once_per_epoch(request, shard_dir, storage):
    root, keys = shard_dir
    if storage == "local":
        kwargs = {"store": str(root)}
    else:
        bucket, _ = request.getfixturevalue("s3_shards")
        kwargs = {"store": f"s3://{bucket}/shards", "storage_options": request.getfixturevalue("s3_options")}
    orders = []
    for epoch in range(2):
        seen = []
        per_rank = []
        for rank in range(2):
            ds = TarShardDataset("train-{000..009}.tar", rank=rank, world_size=2, shuffle=True, seed=3,
                                 shuffle_buffer=3, map_fn=_key_only, prefetch_shards=2, **kwargs)
            ds.set_epoch(epoch)
            with DataLoader(ds, batch_size=None, num_workers=2) as loader:
                got = list(loader)
            per_rank.append(got)
            seen += got
        counts = collections.Counter(seen)
        assert sorted(counts) == sorted(keys) and set(counts.values()) == {1}, "duplicates or missing records"
        assert all(per_rank)  # both ranks got work
        orders.append(seen)
    assert orders[0] != orders[1]  # the epoch reshuffles


@pytest.mark.parametrize("world,workers", [(1, 1), (3, 1), (2, 3), (4, 4)])
def test_shard_assignment_partitions_for_any_layout(shard_dir, world, workers):
    root, _ = shard_dir
    ds = TarShardDataset("train-{000..009}.tar", store=str(root), shuffle=True, seed=11)
    for epoch in range(3):
        assigned = [s for r in range(world) for w in range(workers)
                    for s in ds.assigned_shards(r, world, w, workers, epoch)]
        assert sorted(assigned) == list(range(N_SHARDS))


def test_seeded_shuffles_are_reproducible(shard_dir):
    root, keys = shard_dir

    def run(seed, buffer):
        return _keys(TarShardDataset("train-{000..009}.tar", store=str(root), shuffle=True, seed=seed,
                                     shuffle_buffer=buffer, rank=0, world_size=1))

    a, b, c = run(1, 0), run(1, 0), run(2, 0)
    assert a == b and a != c and sorted(a) == sorted(keys)
    shuffled = run(1, 8)
    assert sorted(shuffled) == sorted(a) and shuffled != a and shuffled == run(1, 8)
    unshuffled = _keys(TarShardDataset("train-{000..009}.tar", store=str(root)))
    assert unshuffled == keys  # template order, archive order
    # a plain re-iteration of the same copy (persistent workers) also reshuffles
    ds = TarShardDataset("train-{000..009}.tar", store=str(root), shuffle=True, seed=1)
    assert _keys(ds) != _keys(ds)


class SlowStore(LocalStore):
    """A local store with latency, counting how many GETs are in flight at once."""

    def __init__(self, root, delay=0.15):
        super().__init__(root)
        self.delay = delay
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = self.gets = 0

    def get(self, key, byte_range=None):
        with self.lock:
            self.in_flight += 1
            self.gets += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            return super().get(key, byte_range)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_shards_download_concurrently_with_a_bound(shard_dir):
    root, keys = shard_dir
    store = SlowStore(root)
    ds = TarShardDataset("train-{000..009}.tar", store=store, prefetch_shards=4)
    start = time.monotonic()
    assert sorted(_keys(ds)) == sorted(keys)
    elapsed = time.monotonic() - start
    assert store.max_in_flight == 4  # concurrent, and never more than the bound
    # serial downloads cannot beat N_SHARDS delays (the in-flight count above is the strict check)
    assert elapsed < N_SHARDS * store.delay, f"{elapsed:.2f}s: downloads did not overlap"
    # stopping early cancels what is queued instead of downloading everything
    store2 = SlowStore(root)
    it = iter(TarShardDataset("train-{000..009}.tar", store=store2, prefetch_shards=2))
    next(it)
    it.close()
    time.sleep(3 * store2.delay)
    assert store2.gets <= 3 and store2.in_flight == 0


def test_download_error_names_the_shard(shard_dir):
    root, _ = shard_dir
    ds = TarShardDataset("train-{008..012}.tar", store=str(root))
    with pytest.raises(FileNotFoundError) as info:
        _keys(ds)
    assert "train-010.tar" in str(info.value) + " ".join(getattr(info.value, "__notes__", []))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_image_decoder_with_our_dataloader(shard_dir, num_workers):
    root, _ = shard_dir
    decoder = ImageRecordDecoder(transform=lambda im: torch.from_numpy(np.asarray(im).copy()))
    ds = TarShardDataset("train-{000..003}.tar", store=str(root), map_fn=decoder)
    with DataLoader(ds, batch_size=2, num_workers=num_workers) as loader:
        batches = list(loader)
    imgs = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert imgs.shape == (1 + 2 + 3 + 4, 12, 16, 3) and labels.dtype == torch.int64
    expected = sorted((s, k) for s in range(4) for k in range(1 + s % 5))
    if num_workers == 0:
        for img, label, (s, k) in zip(imgs, labels, expected):
            assert torch.equal(img, torch.from_numpy(pixels(jpeg(s * 100 + k, size=(16, 12))).copy()))
            assert int(label) == (s + k) % 5


# ----------------------------------------------------------------------------- the seed API
def _source(bucket, s3_options, **kw):
    opts = {k: v for k, v in s3_options.items() if k != "endpoint_url"}
    return TarShardSource(bucket, s3_options["endpoint_url"], prefix="shards", **opts, **kw)


def test_load_from_tar_in_memory_from_s3(s3_shards, s3_options):
    bucket, keys = s3_shards
    source = _source(bucket, s3_options)
    ds = source.load_from_tar("train-{000..004}.tar")
    assert len(ds) == 1 + 2 + 3 + 4 + 5
    img, label = ds[0]
    assert img.shape == (3, 224, 224) and img.dtype == torch.float32 and 0 <= float(img.min()) <= float(img.max()) <= 1
    assert label == 0 and ds[1][1] == 1  # s01/000 -> (1 + 0) % 5
    # custom record_to_pair, output types and shapes
    pairs = source.load_from_tar("train-{000..001}.tar", record_to_pair=lambda r: (pixels(r["jpg"]), r["cls"]),
                                 output_types=(torch.uint8, None), output_shapes=((12, 16, None), None))
    assert pairs[0][0].dtype == torch.uint8 and tuple(pairs[0][0].shape) == (12, 16, 3) and pairs[0][1] == b"0"
    with pytest.raises(DataFormatError, match=r"s00/000.*shape \(12, 16, 3\)"):
        source.load_from_tar("train-000.tar", record_to_pair=lambda r: (pixels(r["jpg"]), 0),
                             output_shapes=((224, 224, 3), ()))
    # seed name, endpoint without a scheme
    host = s3_options["endpoint_url"].removeprefix("http://")
    opts = {k: v for k, v in s3_options.items() if k != "endpoint_url"}
    ais = AisDataset(f"{bucket}", host, prefix="shards", **opts)
    assert len(ais.load_from_tar("train-{000..001}.tar")) == 3
    assert "secret" not in repr(ais).lower()


def test_load_from_tar_to_tfrecord_round_trip(s3_shards, s3_options, tmp_path):
    bucket, keys = s3_shards
    source = _source(bucket, s3_options)
    out = tmp_path / "train.record"
    paths = source.load_from_tar("train-{000..004}.tar", path=out)
    assert paths == [str(out)]
    examples = [decode_example(r) for r in read_tfrecords(out)]
    assert len(examples) == 15
    first = examples[0]
    assert (first["height"], first["width"], first["depth"], first["label"]) == ([12], [16], [3], [0])
    assert first["image_raw"] == [jpeg(0, size=(16, 12))]  # the encoded image, as the seed stores it
    in_memory = source.load_from_tar("train-{000..004}.tar")
    parsed = list(TFRecordDataset(paths).map(default_record_parser))
    assert len(parsed) == len(in_memory)
    for (img, label), (ref_img, ref_label) in zip(parsed, in_memory):
        assert torch.equal(img, ref_img) and label == ref_label
    # several files by size, named from a {} template; all records once
    many = source.load_from_tar("train-{000..004}.tar", path=tmp_path / "part-{}.record", max_shard_size=1500)
    assert len(many) > 2 and Path(many[0]).name == "part-0.record"
    assert sum(1 for p in many for _ in read_tfrecords(p)) == 15


def test_default_record_helpers_name_the_record():
    with pytest.raises(DataFormatError, match=r"s\.tar: record 'k' has no image"):
        default_record_to_pair({"__key__": "k", "__url__": "s.tar", "cls": b"1"})
    with pytest.raises(DataFormatError, match="no label"):
        default_record_to_pair({"__key__": "k", "__url__": "s.tar", "jpg": jpeg(1)})
    with pytest.raises(DataFormatError, match="not an integer"):
        default_record_to_pair({"__key__": "k", "__url__": "s.tar", "jpg": jpeg(1), "cls": b"cat"})


def test_local_directory_source(shard_dir):
    root, keys = shard_dir
    source = TarShardSource(str(root))
    assert [r["__key__"] for r in source.records("train-{000..009}.tar")] == keys
    ds = source.dataset("train-{000..009}.tar", map_fn=_key_only)
    assert list(ds) == keys
