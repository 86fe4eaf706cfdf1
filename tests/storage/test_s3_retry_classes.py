"""Retry classification as the AWS SDKs' "standard" mode: 500/502/503/504, throttling codes and
429 are retried; 501 and every other 4xx fail at once. Against a real local server answering
scripted errors, with botocore and with the lean client."""

from __future__ import annotations

import pytest

from concurrent_dataloader.storage.retry import RetryPolicy, classify_error
from concurrent_dataloader.storage.s3 import S3Error, S3Store
from concurrent_dataloader.storage.s3_http import LeanS3Store

FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01)
KEYS = {"aws_access_key_id": "AKIARETRYCLASS01", "aws_secret_access_key": "retry-secret"}


def make(kind, server, bucket):
    cls = LeanS3Store if kind == "s3lean" else S3Store
    return cls(bucket, endpoint_url=server.endpoint_url, retry=FAST, **KEYS)


@pytest.mark.parametrize("kind", ["s3", "s3lean"])
def test_501_from_head_bucket_raises_at_once(aws_home, recording_server, bucket, kind):
    server, rec = recording_server
    rec.fail(lambda e: e["method"] == "HEAD", 501, "NotImplemented")
    store = make(kind, server, bucket)
    with pytest.raises(Exception) as info:
        store.check()
    assert "501" in str(info.value)
    assert len(rec.seen) == 1 and store.retry_counters.retries == 0
    store.close()


@pytest.mark.parametrize("kind", ["s3", "s3lean"])
@pytest.mark.parametrize("status,code,retried", [
    (500, "InternalError", True), (502, "BadGateway", True), (503, "SlowDown", True), (504, "GatewayTimeout", True),
    (429, "TooManyRequests", True), (400, "Throttling", True), (400, "RequestLimitExceeded", True),
    (503, "ServiceUnavailable", True), (400, "RequestTimeout", True),
    (501, "NotImplemented", False), (400, "InvalidRequest", False), (409, "Conflict", False),
    (405, "MethodNotAllowed", False), (400, "InvalidArgument", False),
])
def test_get_retries_only_transient_errors(aws_home, recording_server, bucket, kind, status, code, retried):
    server, rec = recording_server
    rec.fail(lambda e: e["method"] == "GET", status, code, times=1)
    store = make(kind, server, bucket)
    if retried:
        assert store.get("k") == b"payload"
        assert len(rec.seen) == 2 and store.retry_counters.retries == 1
    else:
        with pytest.raises(Exception) as info:
            store.get("k")
        assert str(status) in str(info.value) or code in str(info.value)
        assert len(rec.seen) == 1 and store.retry_counters.retries == 0
    store.close()


def test_classification_table():
    """The rule itself, on translated errors (what the lean client raises inside the retry loop)."""
    def err(status, code):
        return S3Error("x", "s3://b/k", status=status, code=code)

    assert [classify_error(err(s, "")) for s in (500, 502, 503, 504, 501, 505, 404, 403)] == \
        ["server"] * 4 + [None] * 4
    assert classify_error(err(400, "SlowDown")) == "throttle" and classify_error(err(429, "")) == "throttle"
    assert classify_error(err(400, "ExpiredToken")) == "expired"
    assert classify_error(ConnectionResetError()) == "connection"
    assert classify_error(S3Error("no status")) is None
