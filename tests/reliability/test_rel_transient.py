"""No silent loss: with transient faults an epoch still delivers every index exactly once, in sampler
order, with the bytes that were stored (checked against checksums made with the data)."""

from __future__ import annotations

import random

import pytest

from concurrent_dataloader import DataLoader
from tests.reliability.helpers import IMPLS, STORES, checksum_dataset, collect, put_images, record

N = 120
MIX = {"slowdown": 1, "internal_error": 1, "reset": 1, "truncate": 1}  # the 5% mix


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("fetch_impl", IMPLS)
@pytest.mark.parametrize("store", STORES)
def test_five_percent_transient_faults_lose_nothing(fault_srv, injector, store, fetch_impl, num_workers):
    objs = put_images(fault_srv, "bkt", N)
    injector.set_rate(0.05, MIX, seed=STORES.index(store) * 4 + IMPLS.index(fetch_impl) * 2 + num_workers)
    ds = checksum_dataset(store, fault_srv.endpoint_url, objs)
    order = list(range(N))
    random.Random(7).shuffle(order)  # a fixed permutation: "in order" means in the sampler's order
    with DataLoader(ds, batch_size=8, sampler=order, num_workers=num_workers, fetch_impl=fetch_impl,
                    num_fetch_workers=8, batch_pool=3) as loader:
        indices, sums, labels = collect(loader)
        stats = loader.stats()
    counts = injector.counts()

    assert indices == order  # every index exactly once, in order
    assert sums == [objs.checksums[objs.keys[i]] for i in order]  # the right bytes
    assert labels == [objs.labels[i] for i in order]
    assert counts["injected"] > 0, "the seed injected no fault: the test would prove nothing"
    # Each injected fault cost exactly one failed attempt, retried and counted; none gave up.
    assert stats["retries"] == counts["injected"], (stats, counts)
    assert stats["gave_up"] == 0
    assert stats["attempts"] == N + counts["injected"]
    by_kind = counts["by_kind"]
    assert stats["throttled"] == by_kind.get("slowdown", 0)
    assert stats["server_errors"] == by_kind.get("internal_error", 0)
    assert stats["connection_errors"] == by_kind.get("reset", 0) + by_kind.get("truncate", 0)
    assert stats["samples"] == N and stats["fetch_errors"] == 0
    record(faults=counts["injected"], retries=stats["retries"], samples=N, epochs=1)


@pytest.mark.parametrize("fetch_impl", IMPLS)
@pytest.mark.parametrize("store", STORES)
def test_stall_longer_than_read_timeout_is_retried(fault_srv, injector, store, fetch_impl):
    objs = put_images(fault_srv, "bkt", 12)
    injector.stall_s = 3.0
    injector.on_key(objs.keys[5], "stall", times=1)
    ds = checksum_dataset(store, fault_srv.endpoint_url, objs, read_timeout=1.0)  # 0.4 s timed out healthy GETs on a loaded 2-core CI machine
    with DataLoader(ds, batch_size=4, num_workers=0, fetch_impl=fetch_impl, num_fetch_workers=4) as loader:
        indices, sums, _ = collect(loader)
        stats = loader.stats()
    assert indices == list(range(12))
    assert sums == [objs.checksums[k] for k in objs.keys]
    assert stats["connection_errors"] == 1 and stats["retries"] == 1 and stats["gave_up"] == 0
    record(faults=1, retries=1, samples=12, epochs=1)


@pytest.mark.parametrize("fetch_impl", IMPLS)
@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("kind", ["corrupt", "bad_etag"])
def test_damaged_body_is_refetched_with_verify_etag(fault_srv, injector, store, fetch_impl, kind):
    objs = put_images(fault_srv, "bkt", 12)
    injector.on_key(objs.keys[3], kind, times=1)
    injector.on_key(objs.keys[8], kind, times=2)
    ds = checksum_dataset(store, fault_srv.endpoint_url, objs, verify_etag=True)
    with DataLoader(ds, batch_size=4, num_workers=0, fetch_impl=fetch_impl, num_fetch_workers=4) as loader:
        indices, sums, _ = collect(loader)
        stats = loader.stats()
    assert indices == list(range(12))
    assert sums == [objs.checksums[k] for k in objs.keys]
    assert stats["retries"] == 3 and stats["connection_errors"] == 3 and stats["gave_up"] == 0
    record(faults=3, retries=3, samples=12, epochs=1)


@pytest.mark.parametrize("store", STORES)
def test_bad_etag_without_verification_is_harmless(fault_srv, injector, store):
    """A wrong ETag over the right bytes: without verify_etag nothing looks at it."""
    objs = put_images(fault_srv, "bkt", 8)
    injector.on_key(objs.keys[2], "bad_etag")
    ds = checksum_dataset(store, fault_srv.endpoint_url, objs)
    with DataLoader(ds, batch_size=4, num_workers=0) as loader:
        indices, sums, _ = collect(loader)
        assert loader.stats()["retries"] == 0
    assert indices == list(range(8)) and sums == [objs.checksums[k] for k in objs.keys]


@pytest.mark.parametrize("store", STORES)
def test_persistent_damage_gives_up_naming_key_and_index(fault_srv, injector, store):
    """verify_etag on, every copy damaged: bounded attempts, then an error naming key and index."""
    from concurrent_dataloader.storage.s3 import ChecksumMismatchError

    objs = put_images(fault_srv, "bkt", 8)
    injector.on_key(objs.keys[6], "corrupt")
    ds = checksum_dataset(store, fault_srv.endpoint_url, objs, verify_etag=True)
    with pytest.raises(ChecksumMismatchError) as info, DataLoader(ds, batch_size=4, num_workers=0) as loader:
        collect(loader)
    text = str(info.value) + "\n".join(getattr(info.value, "__notes__", []))
    assert f"s3://bkt/{objs.keys[6]}" in text and "dataset index 6" in text
    assert "gave up after 5 attempt(s)" in text
    assert injector.counts()["by_key"][objs.keys[6]] == 5  # RetryPolicy(max_attempts=5): bounded


@pytest.mark.parametrize("store", STORES)
def test_retries_are_bounded_in_time(fault_srv, injector, store):
    """A key that is throttled forever: with ``max_elapsed`` the store gives up on time, not after
    100 attempts, and says why; the attempts are counted."""
    import time

    from concurrent_dataloader.storage.retry import RetryPolicy, classify_error
    from tests.reliability.helpers import make_store, sha

    objs = put_images(fault_srv, "bkt", 2)
    injector.on_key(objs.keys[1], "slowdown")
    s = make_store(store, fault_srv.endpoint_url, "bkt",
                   retry=RetryPolicy(max_attempts=100, base_delay=0.05, max_delay=0.05, max_elapsed=0.6))
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        s.get(objs.keys[1])
    elapsed = time.monotonic() - start
    counters = s.retry_counters.snapshot()
    assert classify_error(info.value) == "throttle"
    assert 0.3 < elapsed < 3.0
    assert 2 < counters["attempts"] < 100 and counters["gave_up"] == 1 and counters["throttled"] == counters["attempts"]
    assert "max_elapsed=0.6" in "".join(info.value.__notes__)
    assert sha(s.get(objs.keys[0])) == objs.checksums[objs.keys[0]]  # other keys are unaffected
    s.close()
