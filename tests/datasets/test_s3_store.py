"""S3Store against a real moto server over HTTP, with real botocore/aiobotocore clients."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import pickle
import warnings

import pytest

from concurrent_dataloader.storage import (
    BucketNotFoundError,
    ObjectNotFoundError,
    RetryPolicy,
    S3AccessDeniedError,
    S3Store,
    open_store,
)
from concurrent_dataloader.storage.retry import classify_error

FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def store(s3_bucket, proxy_options):
    st = open_store(f"s3://{s3_bucket}/data", retry=FAST_RETRY, **proxy_options)
    yield st
    st.close()


def _fill(store: S3Store, n: int = 3) -> dict[str, bytes]:
    objs = {f"dir/obj{i:02d}": bytes(range(i, i + 40)) for i in range(n)}
    for k, v in objs.items():
        store.put(k, v)
    return objs


async def _aget_all(store: S3Store, keys, byte_range=None):
    try:
        return await asyncio.gather(*(store.aget(k, byte_range) for k in keys))
    finally:
        await store.aclose()


def test_open_store_s3_scheme(s3_bucket, s3_options):
    st = open_store(f"s3://{s3_bucket}/some/prefix", max_pool_connections=7, **s3_options)
    assert isinstance(st, S3Store)
    assert (st.bucket, st.prefix, st.max_pool_connections) == (s3_bucket, "some/prefix", 7)
    assert st.describe("a.jpg") == f"s3://{s3_bucket}/some/prefix/a.jpg"
    path_style = open_store(f"s3://{s3_bucket}/p/", addressing_style="path", **s3_options)
    path_style.put("k", b"v")
    assert path_style.get("k") == b"v" and st.client.meta.config.s3 is None
    assert path_style.client.meta.config.s3 == {"addressing_style": "path"}


def test_get_one_get_per_object_no_head(store, s3_proxy):
    objs = _fill(store)
    s3_proxy.reset_counts()
    for k, v in objs.items():
        assert store.get(k) == v
    assert s3_proxy.count("GET", "/dir/obj") == len(objs)
    assert s3_proxy.count("HEAD") == 0
    assert asyncio.run(_aget_all(store, list(objs))) == list(objs.values())
    assert s3_proxy.count("GET", "/dir/obj") == 2 * len(objs)
    assert s3_proxy.count("HEAD") == 0
    assert store.stats()["requests"] == 2 * len(objs)


def test_byte_range_sync_and_async(store):
    objs = _fill(store, 1)
    key, data = next(iter(objs.items()))
    assert store.get(key, (5, 10)) == data[5:15]
    assert store.get(key, (0, 0)) == b""
    assert asyncio.run(_aget_all(store, [key], (30, 10))) == [data[30:40]]
    with pytest.raises(EOFError, match="wanted 20 bytes at offset 30"):
        store.get(key, (30, 20))
    with pytest.raises(EOFError, match="beyond the end"):
        store.get(key, (100, 5))


def test_list_paginates_and_is_relative(store, s3_proxy):
    objs = _fill(store, 5)
    store.put("other/x", b"1")
    store.list_page_size = 2
    s3_proxy.reset_counts()
    assert list(store.list("dir/")) == sorted(objs)
    assert s3_proxy.count("GET", "list-type=2") == 3  # 5 keys, 2 per page
    assert list(store.list()) == sorted([*objs, "other/x"])
    assert store.size("other/x") == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_missing_key_and_bucket_errors(store, s3_options, mode):
    def get(st, key):
        return st.get(key) if mode == "sync" else asyncio.run(_aget_all(st, [key]))[0]

    with pytest.raises(ObjectNotFoundError) as info:
        get(store, "nope.jpg")
    assert isinstance(info.value, FileNotFoundError)
    assert f"s3://{store.bucket}/data/nope.jpg" in str(info.value)
    # The error survives pickling (worker -> main process).
    again = pickle.loads(pickle.dumps(info.value))
    assert again.url == info.value.url and str(again) == str(info.value)

    missing = S3Store("no-such-bucket-xyz", **s3_options, retry=FAST_RETRY)
    with pytest.raises(BucketNotFoundError, match="no-such-bucket-xyz"):
        get(missing, "k")
    with pytest.raises(BucketNotFoundError, match="does not exist"):
        missing.check()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("fault", ["slowdown", "internal", "reset", "truncate"])
def test_transient_faults_are_retried_and_counted(store, s3_proxy, mode, fault):
    objs = _fill(store, 1)
    key, data = next(iter(objs.items()))
    s3_proxy.inject(fault, times=2, path_contains="/dir/obj")
    s3_proxy.reset_counts()
    store.retry_counters.reset()
    got = store.get(key) if mode == "sync" else asyncio.run(_aget_all(store, [key]))[0]
    assert got == data
    assert s3_proxy.count("GET", "/dir/obj") == 3  # two faults, then success: botocore's own retries are off
    stats = store.stats()
    cause = {"slowdown": "throttled", "internal": "server_errors"}.get(fault, "connection_errors")
    assert stats["gave_up"] == 0 and stats["attempts"] == stats["retries"] + 1 == stats[cause] + 1
    if mode == "async" and fault == "reset":
        # aiohttp transparently resends an idempotent request once when the connection drops
        # before a response (RFC 9112 9.3.1); that resend is below our retry layer.
        assert stats["retries"] >= 1
    else:
        assert stats["retries"] == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_retries_are_bounded(store, s3_proxy, mode):
    store.put("k", b"x")
    s3_proxy.inject("slowdown", times=10, path_contains="/data/k")
    s3_proxy.reset_counts()
    with pytest.raises(Exception) as info:
        store.get("k") if mode == "sync" else asyncio.run(_aget_all(store, ["k"]))
    assert classify_error(info.value) == "throttle"
    assert any("gave up after 4 attempt" in n for n in info.value.__notes__)
    assert s3_proxy.count("GET", "/data/k") == FAST_RETRY.max_attempts
    assert store.stats()["gave_up"] == 1


def test_not_found_is_not_retried(store, s3_proxy):
    s3_proxy.reset_counts()
    with pytest.raises(ObjectNotFoundError):
        store.get("missing")
    assert s3_proxy.count("GET", "missing") == 1
    assert store.stats()["retries"] == 0


def _backoffs(queue):
    queue.put([RetryPolicy(base_delay=1.0, max_delay=1.0).backoff(1) for _ in range(5)])


def test_forked_processes_draw_different_jitter():
    RetryPolicy().backoff(1)  # the parent's RNG exists before the fork
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_backoffs, args=(queue,)) for _ in range(2)]
    for p in procs:
        p.start()
    a, b = queue.get(timeout=60), queue.get(timeout=60)
    for p in procs:
        p.join(30)
    assert a != b


def test_backoff_is_jittered_and_capped():
    policy = RetryPolicy(max_attempts=10, base_delay=0.5, max_delay=2.0)
    samples = [policy.backoff(n) for n in range(1, 8) for _ in range(50)]
    assert all(0 <= s <= 2.0 for s in samples)
    assert len(set(samples)) > 100  # jittered, not a fixed schedule
    assert max(policy.backoff(1) for _ in range(200)) <= 0.5


def test_bad_retry_and_pool_settings_rejected(s3_bucket):
    from concurrent_dataloader import ConfigError

    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError):
        S3Store(s3_bucket, max_pool_connections=0)
    with pytest.raises(ConfigError, match="both"):
        S3Store(s3_bucket, aws_access_key_id="only-the-id")


def test_pool_connections_configured_and_warning(s3_bucket, s3_options):
    st = S3Store(s3_bucket, max_pool_connections=2, **s3_options)
    assert st.client.meta.config.max_pool_connections == 2
    assert st.client.meta.config.retries["total_max_attempts"] == 1
    for i in range(6):
        st.put(f"k{i}", b"v" * 10)

    async def many():
        return await _aget_all(st, [f"k{i}" for i in range(6)])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(many()) == [b"v" * 10] * 6
    assert any("max_pool_connections=2" in str(w.message) for w in caught)
    st.close()


def test_pickle_drops_clients_and_secret_not_in_repr(store, s3_options):
    store.put("a", b"1")
    assert store.get("a") == b"1"
    assert S3Store._proc.peek(store).sync_client is not None
    clone = pickle.loads(pickle.dumps(store))
    assert S3Store._proc.peek(clone) is None
    assert clone.get("a") == b"1"
    secret = s3_options["aws_secret_access_key"]
    assert secret not in repr(store) and secret not in store.describe("a")


def _child_get(store, key, queue):
    try:
        queue.put(("ok", store.get(key), asyncio.run(_aget_all(store, [key]))[0]))
    except BaseException as exc:  # pragma: no cover - reported to the parent
        queue.put(("error", repr(exc), None))


@pytest.mark.parametrize("method", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_store_survives_fork_and_spawn(store, method):
    store.put("a", b"payload")
    assert store.get("a") == b"payload"  # parent has a live client before the fork
    ctx = mp.get_context(method)
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_get, args=(store, "a", queue))
    proc.start()
    result = queue.get(timeout=120)
    proc.join(30)
    assert result == ("ok", b"payload", b"payload")
    assert store.get("a") == b"payload"  # parent's client still works after the child used its own


def test_wrong_credentials_message_has_no_secret(auth_s3):
    endpoint, key_id, secret, bucket = auth_s3
    good = S3Store(bucket, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key_id,
                   aws_secret_access_key=secret, retry=FAST_RETRY)
    assert good.get("img/n00000000_0.JPEG")[:2] == b"\xff\xd8"
    wrong_secret = "WRONG-secret-value-0123456789"
    for kid in (key_id, "AKIAUNKNOWNKEY000000"):
        bad = S3Store(bucket, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=kid,
                      aws_secret_access_key=wrong_secret, retry=FAST_RETRY)
        for call in (bad.check, lambda: bad.get("img/n00000000_0.JPEG")):
            with pytest.raises(S3AccessDeniedError) as info:
                call()
            text = str(info.value) + repr(info.value) + "".join(getattr(info.value, "__notes__", []))
            assert "access denied" in text and f"s3://{bucket}" in text
            assert wrong_secret not in text and secret not in text and kid not in text
            assert isinstance(info.value, PermissionError)
