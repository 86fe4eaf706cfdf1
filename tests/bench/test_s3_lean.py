"""The lean S3 client (SigV4 by hand, raw HTTP): signatures, bytes, ranges, errors, pools, CPU cost."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import pickle

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from benchmarking.s3_server import RequestHook, S3Server, s3_error
from concurrent_dataloader.storage import open_store
from concurrent_dataloader.storage.retry import RetryPolicy
from concurrent_dataloader.storage.s3 import BucketNotFoundError, ObjectNotFoundError, S3AccessDeniedError
from concurrent_dataloader.storage.s3_http import LeanS3Client, LeanS3Store, S3Credentials, S3HTTPError, SigV4Signer

from tests.bench.helpers import BENCH_CREDS


def test_signature_matches_aws_documentation_example():
    # "GET Object" example of the AWS SigV4 documentation for S3 (header-based auth).
    signer = SigV4Signer(S3Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"), "us-east-1")
    headers = signer.sign("GET", "examplebucket.s3.amazonaws.com", "/test.txt", None, {"range": "bytes=0-9"},
                          "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "20130524T000000Z")
    assert headers["Authorization"].endswith(
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


@pytest.mark.parametrize("token", [None, "session-token-xyz"])
@pytest.mark.parametrize("path, query", [
    ("/bkt/n01/img_1.JPEG", None),
    ("/bkt/a%20b/c~d%2Be.jpg", None),
    ("/bkt", {"list-type": "2", "prefix": "train/n01 x/", "continuation-token": "abc=="}),
])
def test_signature_matches_botocore(path, query, token):
    from urllib.parse import quote

    # RFC 3986 encoding, as botocore's serializer writes query strings
    qs = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}" for k, v in (query or {}).items())
    url = "http://127.0.0.1:9000" + path + ("?" + qs if qs else "")
    req = AWSRequest(method="GET", url=url, headers={"Range": "bytes=1-3"})
    S3SigV4Auth(Credentials("AKID", "SECRET", token), "s3", "eu-west-1").add_auth(req)
    ours = SigV4Signer(S3Credentials("AKID", "SECRET", token), "eu-west-1").sign(
        "GET", "127.0.0.1:9000", path, query, {"range": "bytes=1-3"}, req.headers["X-Amz-Content-SHA256"],
        req.headers["X-Amz-Date"])
    assert ours["Authorization"] == req.headers["Authorization"]


@pytest.fixture(params=["fast", "moto"])
def lean_store(request, fast_server, s3_options, s3_client):
    """A LeanS3Store on a fresh bucket, on our fast server or on moto."""
    bucket = f"lean-{os.urandom(5).hex()}"
    if request.param == "fast":
        fast_server.create_bucket(bucket)
        options = {"endpoint_url": fast_server.endpoint_url, **BENCH_CREDS}
    else:
        s3_client.create_bucket(Bucket=bucket)
        options = dict(s3_options)
    store = LeanS3Store(bucket, "pre/", **options)
    yield store
    store.close()


def test_get_range_size_list(lean_store):
    data = os.urandom(120_000)
    lean_store.put("x/1.bin", data)
    lean_store.put("x/2.bin", b"hello")
    lean_store.put("y z+w.bin", b"q")
    assert lean_store.get("x/1.bin") == data
    assert lean_store.get("x/1.bin", (1000, 5000)) == data[1000:6000]
    assert lean_store.get("x/1.bin", (0, 0)) == b""
    assert lean_store.size("x/1.bin") == 120_000
    assert list(lean_store.list()) == ["x/1.bin", "x/2.bin", "y z+w.bin"]
    assert list(lean_store.list("x/")) == ["x/1.bin", "x/2.bin"]
    assert lean_store.describe("x/1.bin") == f"s3://{lean_store.bucket}/pre/x/1.bin"


def test_errors_name_the_key(lean_store):
    lean_store.put("small", b"0123456789")
    with pytest.raises(ObjectNotFoundError, match=r"s3://lean-\w+/pre/missing\.JPEG") as err:
        lean_store.get("missing.JPEG")
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(EOFError, match="pre/small"):
        lean_store.get("small", (5, 10))  # runs past the end
    with pytest.raises(EOFError, match="beyond the end"):
        lean_store.get("small", (50, 10))  # starts past the end
    other = LeanS3Store("no-such-bucket-4242", endpoint_url=lean_store.client.endpoint_url, **BENCH_CREDS)
    with pytest.raises(BucketNotFoundError):
        other.get("k")
    with pytest.raises(BucketNotFoundError):
        other.put("k", b"1")


async def test_async_get_concurrent_and_errors(lean_store):
    data = os.urandom(30_000)
    lean_store.put("a", data)
    results = await asyncio.gather(*[lean_store.aget("a") for _ in range(32)], lean_store.aget("a", (7, 9)))
    assert all(r == data for r in results[:32]) and results[32] == data[7:16]
    with pytest.raises(ObjectNotFoundError, match="pre/nope"):
        await lean_store.aget("nope")
    await lean_store.aclose()
    assert await lean_store.aget("a") == data  # reopens after aclose


def test_credentials_never_in_repr_or_errors(fast_server):
    store = LeanS3Store("nobucket", endpoint_url=fast_server.endpoint_url, **BENCH_CREDS)
    text = repr(store) + repr(store.client) + repr(store.client._credentials()) + repr(store.client.credentials)
    with pytest.raises(BucketNotFoundError) as err:
        store.get("k")
    text += str(err.value)
    assert BENCH_CREDS["aws_secret_access_key"] not in text
    assert BENCH_CREDS["aws_access_key_id"] not in text


def test_access_denied_maps_and_masks(fast_server, fast_bucket):
    class Deny(RequestHook):
        def before(self, request):
            return s3_error(403, "SignatureDoesNotMatch", "nope")

    with S3Server(hooks=[Deny()], buckets={"d": None}) as server:
        store = LeanS3Store("d", endpoint_url=server.endpoint_url, **BENCH_CREDS)
        with pytest.raises(S3AccessDeniedError) as err:
            store.get("k")
        assert isinstance(err.value, PermissionError)
        assert BENCH_CREDS["aws_access_key_id"] not in str(err.value)


def test_retries_on_503_and_counts_them():
    class FailTwice(RequestHook):
        left = 2

        def before(self, request):
            if request.method == "GET" and self.left:
                self.left -= 1
                return s3_error(503, "SlowDown", "slow down")
            return None

    with S3Server(hooks=[FailTwice()], buckets={"r": None}) as server:
        server.put_object("r", "k", b"ok")
        store = LeanS3Store("r", endpoint_url=server.endpoint_url, retry=RetryPolicy(base_delay=0.01), **BENCH_CREDS)
        assert store.get("k") == b"ok"
        counts = store.retry_counters.snapshot()
        assert counts["retries"] == 2 and counts["throttled"] == 2
        server.hooks[0].left = 5
        store2 = LeanS3Store("r", endpoint_url=server.endpoint_url, retry=RetryPolicy(max_attempts=2, base_delay=0.01),
                             **BENCH_CREDS)
        with pytest.raises(S3HTTPError) as err:
            store2.get("k")
        assert err.value.status == 503 and err.value.code == "SlowDown"
        assert "gave up after 2 attempt(s)" in "".join(err.value.__notes__)


async def test_stale_keep_alive_connections_are_replaced_without_retry(fast_server, fast_bucket):
    store = LeanS3Store(fast_bucket, endpoint_url=fast_server.endpoint_url, **BENCH_CREDS)
    store.put("k", b"v")
    assert store.get("k") == b"v"
    assert await store.aget("k") == b"v"
    await asyncio.sleep(0.05)
    assert fast_server.drop_idle_connections() >= 2
    await asyncio.sleep(0.05)
    assert store.get("k") == b"v"
    assert await store.aget("k") == b"v"
    assert store.retry_counters.snapshot()["retries"] == 0
    store.close()


def _child_get(store: LeanS3Store, q) -> None:
    q.put(store.get("k"))


def test_pickles_without_sockets_and_works_after_fork(fast_server, fast_bucket):
    store = LeanS3Store(fast_bucket, endpoint_url=fast_server.endpoint_url, **BENCH_CREDS)
    store.put("k", b"forked")
    assert store.get("k") == b"forked"  # the parent now has a pooled socket
    clone = pickle.loads(pickle.dumps(store))
    assert LeanS3Client._proc.peek(clone.client) is None and clone.get("k") == b"forked"
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_get, args=(store, q))
    p.start()
    assert q.get(timeout=30) == b"forked"
    p.join(30)
    assert p.exitcode == 0
    assert store.get("k") == b"forked"  # the parent's pool is untouched


def test_registered_scheme(fast_server, fast_bucket):
    store = open_store(f"s3lean://{fast_bucket}/sub", endpoint_url=fast_server.endpoint_url, **BENCH_CREDS)
    assert isinstance(store, LeanS3Store) and store.prefix == "sub"
    store.put("a.bin", b"1")
    assert store.describe("a.bin") == f"s3://{fast_bucket}/sub/a.bin"
    assert list(store.list()) == ["a.bin"]


@pytest.mark.parametrize("client", ["lean-sync", "lean-async"])
def test_client_cpu_per_get_within_budget(fast_server, fast_bucket, client):
    from benchmarking.s3_bench import client_cpu_subprocess

    keys = [f"obj/{i}" for i in range(8)]
    for k in keys:
        fast_server.put_object(fast_bucket, k, os.urandom(110_000))
    result = client_cpu_subprocess(client, fast_server.endpoint_url, fast_bucket, keys, n=600, concurrency=8)
    # the target: <= 0.5 ms of client CPU per GET (botocore: ~1-2 ms)
    assert result["cpu_ms_per_get"] <= 0.5, result
    assert result["mb_per_get"] == pytest.approx(0.11)


def test_moto_verifies_our_signatures_with_iam_auth_on():
    """moto checks SigV4 signatures only with IAM authentication on: a private moto server here,
    an IAM user with an s3:* policy, then signed GET/ranged GET/HEAD/LIST/PUT and a wrong secret."""
    import json

    import boto3
    from moto.core.authorization import enable_iam_authentication
    from moto.server import ThreadedMotoServer

    from tests.bench.helpers import free_port_for_test

    port = free_port_for_test()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        ep = f"http://127.0.0.1:{port}"
        admin = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id="admin", aws_secret_access_key="x")
        iam = boto3.client("iam", **admin)
        iam.create_user(UserName="lean")
        iam.put_user_policy(UserName="lean", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="lean")["AccessKey"]
        boto3.client("s3", **admin).create_bucket(Bucket="signed")
        boto3.client("s3", **admin).put_object(Bucket="signed", Key="dir/a b+c~.bin", Body=b"0123456789" * 100)
        opts = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"])
        with enable_iam_authentication():
            store = LeanS3Store("signed", aws_secret_access_key=key["SecretAccessKey"], **opts)
            assert store.get("dir/a b+c~.bin", (5, 10)) == b"5678901234"
            assert asyncio.run(store.aget("dir/a b+c~.bin"))[:12] == b"012345678901"
            assert store.size("dir/a b+c~.bin") == 1000
            assert list(store.list("dir/")) == ["dir/a b+c~.bin"]
            store.put("new key.bin", b"xyz")
            assert store.get("new key.bin") == b"xyz"
            wrong = LeanS3Store("signed", aws_secret_access_key="not-the-secret", **opts)
            with pytest.raises(S3AccessDeniedError, match="SignatureDoesNotMatch"):
                wrong.get("dir/a b+c~.bin")
    finally:
        server.stop()
