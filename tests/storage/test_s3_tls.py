"""TLS: both S3 clients over a local HTTPS server whose certificate is made in the test (trustme).
Verification is on by default; ``verify=False``, a CA-bundle path and ``AWS_CA_BUNDLE`` each work."""

from __future__ import annotations

import ssl

import pytest

from benchmarking.s3_bench import TLSFront
from concurrent_dataloader.storage.retry import RetryPolicy
from concurrent_dataloader.storage.s3 import S3Store
from concurrent_dataloader.storage.s3_http import LeanS3Store

ONCE = RetryPolicy(max_attempts=1)
KEYS = {"aws_access_key_id": "AKIATLSTEST00001", "aws_secret_access_key": "tls-secret"}
STORES = {"s3lean": LeanS3Store, "s3": S3Store}


@pytest.fixture
def https_server(recording_server, tls_ca):
    server, rec = recording_server
    with TLSFront(server.endpoint_url, tls_ca["cert"], tls_ca["key"]) as front:
        yield front, rec


def _fetch(kind, bucket, **options):
    store = STORES[kind](bucket, retry=ONCE, **KEYS, **options)
    try:
        return store.get("k")
    finally:
        store.close()


async def _afetch(bucket, **options):
    store = LeanS3Store(bucket, retry=ONCE, **KEYS, **options)
    try:
        return await store.aget("k")
    finally:
        await store.aclose()
        store.close()


def _is_cert_error(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@pytest.mark.parametrize("kind", sorted(STORES))
def test_verification_is_on_by_default(aws_home, https_server, bucket, kind):
    front, rec = https_server
    with pytest.raises(Exception) as info:
        _fetch(kind, bucket, endpoint_url=front.endpoint_url)
    assert _is_cert_error(info.value), repr(info.value)
    assert rec.seen == []  # nothing was sent over the untrusted connection


async def test_lean_async_verification_is_on_by_default(aws_home, https_server, bucket):
    front, rec = https_server
    with pytest.raises(ssl.SSLCertVerificationError):
        await _afetch(bucket, endpoint_url=front.endpoint_url)
    assert rec.seen == []


@pytest.mark.parametrize("kind", sorted(STORES))
@pytest.mark.parametrize("how", ["verify=False", "CA bundle path", "AWS_CA_BUNDLE", "profile ca_bundle"])
def test_https_with_each_trust_setting(aws_home, https_server, bucket, tls_ca, kind, how):
    front, rec = https_server
    options = {"endpoint_url": front.endpoint_url}
    if how == "verify=False":
        options["verify"] = False
    elif how == "CA bundle path":
        options["verify"] = tls_ca["ca"]
    elif how == "AWS_CA_BUNDLE":
        aws_home.monkeypatch.setenv("AWS_CA_BUNDLE", tls_ca["ca"])
    else:
        aws_home.config(f"[default]\nca_bundle = {tls_ca['ca']}\n")
    assert _fetch(kind, bucket, **options) == b"payload"
    assert rec.seen[-1]["path"] == f"/{bucket}/k" and rec.seen[-1]["key_id"] == KEYS["aws_access_key_id"]


@pytest.mark.parametrize("how", ["verify=False", "CA bundle path", "AWS_CA_BUNDLE"])
async def test_lean_async_https(aws_home, https_server, bucket, tls_ca, how):
    front, _ = https_server
    options = {"endpoint_url": front.endpoint_url}
    if how == "verify=False":
        options["verify"] = False
    elif how == "CA bundle path":
        options["verify"] = tls_ca["ca"]
    else:
        aws_home.monkeypatch.setenv("AWS_CA_BUNDLE", tls_ca["ca"])
    assert await _afetch(bucket, **options) == b"payload"


def test_a_wrong_ca_bundle_is_refused(aws_home, https_server, bucket, tmp_path, tls_ca):
    """A bundle that does not hold the server's CA: refused, even though AWS_CA_BUNDLE is right
    (the argument wins, as in botocore)."""
    trustme = pytest.importorskip("trustme")
    front, rec = https_server
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    aws_home.monkeypatch.setenv("AWS_CA_BUNDLE", tls_ca["ca"])
    with pytest.raises(ssl.SSLCertVerificationError):
        _fetch("s3lean", bucket, endpoint_url=front.endpoint_url, verify=str(other))
    assert rec.seen == []
