"""The on-disk cache: shared by worker processes, atomic, bounded; the 2nd epoch reaches S3 zero times."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import pickle

import pytest
import torchvision.transforms as T
from tests.datasets.helpers import upload_folder

from concurrent_dataloader import DataLoader, get_dataset
from concurrent_dataloader.storage.cache import DiskCache


def payload(key: str, size: int = 3000) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_second_epoch_fetches_nothing_from_s3(fetch_impl, image_folder, s3_client, s3_bucket, proxy_options,
                                              s3_proxy, tmp_path):
    upload_folder(s3_client, s3_bucket, image_folder["base"], image_folder["files"])
    n = len(image_folder["files"])

    def build():
        return get_dataset("s3", "train", use_cache=True, index_file=image_folder["index_file"],
                           classes_file=image_folder["classes_file"], bucket=s3_bucket, cache_dir=tmp_path / "cache",
                           transform=T.PILToTensor(), **proxy_options)

    ds = build()
    s3_proxy.reset_counts()
    # Workers are separate processes, re-created each epoch (not persistent): only a disk cache helps.
    with DataLoader(ds, batch_size=4, num_workers=2, fetch_impl=fetch_impl, num_fetch_workers=3) as loader:
        first = [y.tolist() for _, y in loader]
        assert s3_proxy.count("GET", f"/{s3_bucket}/train/") == n
        second = [y.tolist() for _, y in loader]
        assert s3_proxy.count("GET", f"/{s3_bucket}/train/") == n  # epoch 2: no new GET at all
    assert first == second
    # A new dataset object (a new run) shares the same cache.
    again = build()
    assert [again[i][1] for i in range(n)] == sum(first, [])
    assert s3_proxy.count("GET", f"/{s3_bucket}/train/") == n
    entries = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(entries) == n


def test_cache_off_fetches_every_epoch(image_folder, s3_client, s3_bucket, proxy_options, s3_proxy):
    upload_folder(s3_client, s3_bucket, image_folder["base"], image_folder["files"])
    ds = get_dataset("s3", "train", use_cache=False, index_file=image_folder["index_file"],
                     classes_file=image_folder["classes_file"], bucket=s3_bucket, transform=T.PILToTensor(),
                     **proxy_options)
    s3_proxy.reset_counts()
    with DataLoader(ds, batch_size=6, num_workers=0, fetch_impl="asyncio") as loader:
        for _ in range(2):
            list(loader)
    assert s3_proxy.count("GET", f"/{s3_bucket}/train/") == 2 * len(image_folder["files"])


def test_get_put_roundtrip_atomic_and_namespaced(tmp_path):
    a = DiskCache(tmp_path, namespace="s3|bucket-a", max_bytes=10**6)
    b = DiskCache(tmp_path, namespace="s3|bucket-b", max_bytes=10**6)
    assert a.get("k") is None
    a.put("k", b"from-a")
    assert a.get("k") == b"from-a" and b.get("k") is None
    assert a.stats() == {"hits": 1, "misses": 1, "evicted": 0}
    assert not [p for p in tmp_path.rglob(".tmp-*")]  # no temp files left behind
    clone = pickle.loads(pickle.dumps(a))
    assert clone.get("k") == b"from-a" and clone.stats()["hits"] == 1  # counters are per process


def test_eviction_bounds_size_and_keeps_recent(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=20_000, low_water=0.9, check_every_bytes=1)  # 3000-byte entries
    for i in range(5):
        cache.put(f"old{i}", payload(f"old{i}"))
        os.utime(cache.path(f"old{i}"), (1_000_000 + i, 1_000_000 + i))  # clearly the oldest, in order
    assert cache.get("old0") == payload("old0")  # a hit makes the oldest entry young again
    for i in range(4):
        cache.put(f"new{i}", payload(f"new{i}"))
        assert cache.total_bytes() <= 20_000
    assert cache.stats()["evicted"] == 3
    assert [cache.get(f"old{i}") is not None for i in range(5)] == [True, False, False, False, True]
    assert all(cache.get(f"new{i}") == payload(f"new{i}") for i in range(4))


def _writer(directory: str, worker: int, queue) -> None:
    cache = DiskCache(directory, namespace="shared", max_bytes=10**7)
    for i in range(40):
        key = f"key{(i * 7 + worker) % 25}"
        got = cache.get(key)
        if got is not None and got != payload(key):
            queue.put(f"torn read of {key}")
            return
        cache.put(key, payload(key))
    queue.put("ok")


def test_many_processes_share_one_cache_without_torn_entries(tmp_path):
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, queue)) for w in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert results == ["ok"] * 4
    cache = DiskCache(tmp_path, namespace="shared", max_bytes=10**7)
    assert all(cache.get(f"key{k}") == payload(f"key{k}") for k in range(25))


def test_write_failure_is_not_fatal(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=10**6)
    cache.path("k").parent.write_bytes(b"")  # a file where the entry's directory should be
    cache.put("k", b"v")  # must not raise: the cache is an optimisation
    assert cache.get("k") is None


def test_bad_cache_settings(tmp_path):
    from concurrent_dataloader import ConfigError

    with pytest.raises(ConfigError):
        DiskCache(tmp_path, max_bytes=0)
    with pytest.raises(ConfigError):
        DiskCache(tmp_path, low_water=0)
