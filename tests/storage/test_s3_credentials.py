"""Credentials in real deployments: expiring keys are refreshed inside worker processes, an
``ExpiredToken`` answer makes the client fetch new keys and retry once, and only the *source* of
keys from a profile or file travels to workers. Against a real local server that records the key
id of every signed request."""

from __future__ import annotations

import json
import os
import pickle
import sys
import time

import pytest

from concurrent_dataloader import DataLoader
from concurrent_dataloader.datasets.image import ImageDataset
from concurrent_dataloader.storage.retry import RetryPolicy
from concurrent_dataloader.storage.s3 import S3AccessDeniedError, S3Store
from concurrent_dataloader.storage.s3_http import LeanS3Store

FAST = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.01)

# A credential_process that issues a new key id on every call, valid for ADVISORY + `lifetime`
# seconds, and logs "<key id> <pid of the process that asked>".
_PROCESS = """
import datetime, json, os, sys, uuid
lifetime, log = float(sys.argv[1]), sys.argv[2]
kid = "ASIA" + uuid.uuid4().hex[:16].upper()
with open(log, "a") as f:
    f.write(f"{kid} {os.getppid()}\\n")
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=900 + lifetime)
print(json.dumps({"Version": 1, "AccessKeyId": kid, "SecretAccessKey": "secret-" + kid, "SessionToken": "token-" + kid,
                  "Expiration": expires.isoformat()}))
"""
# NOTE: botocore refreshes process credentials in an advisory window of 15 minutes (900 s) before
# they expire, so keys "expiring in 900 + L seconds" are replaced every L seconds.


def expiring_profile(aws_home, lifetime: float) -> tuple[str, object]:
    script = aws_home.root / "issue_keys.py"
    script.write_text(_PROCESS)
    log = aws_home.root / "issued.log"
    log.write_text("")
    aws_home.config(f"[profile expiring]\ncredential_process = {sys.executable} {script} {lifetime} {log}\n")
    return "expiring", log


def issued(log) -> dict[str, int]:
    out = {}
    for line in log.read_text().splitlines():
        kid, pid = line.split()
        out[kid] = int(pid)
    return out


class PidDataset(ImageDataset):
    """Samples are ``(index, pid of the worker that fetched it)``; the bytes are not images."""

    def decode(self, index, raw):
        assert raw == b"x" * 64
        return index, os.getpid()


@pytest.mark.parametrize("fetch_impl", ["threaded", "asyncio"])
def test_expiring_keys_are_refreshed_in_every_worker(aws_home, recording_server, bucket, fetch_impl):
    server, rec = recording_server
    profile, log = expiring_profile(aws_home, lifetime=1.2)
    keys = [f"obj/{i:04d}" for i in range(4000)]
    for k in keys:
        server.put_object(bucket, k, b"x" * 64)
    server.configure(latency_ms=20)
    store = LeanS3Store(bucket, endpoint_url=server.endpoint_url, profile_name=profile, retry=FAST)
    assert b"secret-" not in pickle.dumps(store)  # nothing resolved in the parent, nothing pickled
    ds = PidDataset(store, keys, [0] * len(keys))
    pids = set()
    started = time.monotonic()
    with DataLoader(ds, batch_size=4, num_workers=2, num_fetch_workers=2, fetch_impl=fetch_impl) as loader:
        for _, worker_pids in loader:
            pids.update(int(p) for p in worker_pids)
            if time.monotonic() - started > 4.5:
                break
    assert len(pids) == 2
    by_key = issued(log)
    assert os.getpid() not in by_key.values()  # each worker resolved its own keys
    signed = [e["key_id"] for e in rec.seen if e["key_id"] is not None]
    assert signed and all(k in by_key for k in signed)  # every request was signed with issued keys
    for pid in pids:
        used = {k for k in signed if by_key[k] == pid}
        assert len(used) >= 2, f"worker {pid} signed every request with one key id"
        n_requests = sum(1 for k in signed if by_key[k] == pid)
        assert len(used) <= 8 < n_requests  # refreshed near expiry, not once per request


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("kind", ["s3", "s3lean"])
def test_expired_token_refreshes_and_retries_once(aws_home, recording_server, bucket, kind, mode):
    import asyncio

    server, rec = recording_server
    profile, log = expiring_profile(aws_home, lifetime=3600)
    first: list[str] = []

    def first_key(entry):
        if not first:
            first.append(entry["key_id"])
        return entry["key_id"] == first[0]

    rec.fail(first_key, 400, "ExpiredToken")  # every request with the first key id
    cls = LeanS3Store if kind == "s3lean" else S3Store
    store = cls(bucket, endpoint_url=server.endpoint_url, profile_name=profile, retry=FAST)
    if mode == "sync":
        assert store.get("k") == b"payload"
    else:
        async def run():
            try:
                return await store.aget("k")
            finally:
                await store.aclose()

        assert asyncio.run(run()) == b"payload"
    store.close()
    assert [e["key_id"] for e in rec.seen][0] == first[0] != rec.seen[1]["key_id"]
    assert len(rec.seen) == 2 and len(issued(log)) == 2
    assert store.retry_counters.retries == 1


def test_expired_token_on_fresh_keys_gives_up_after_one_retry(aws_home, recording_server, bucket):
    server, rec = recording_server
    profile, log = expiring_profile(aws_home, lifetime=3600)
    rec.fail(lambda e: True, 400, "ExpiredToken")
    store = LeanS3Store(bucket, endpoint_url=server.endpoint_url, profile_name=profile, retry=FAST)
    with pytest.raises(S3AccessDeniedError, match="ExpiredToken"):
        store.get("k")
    assert len(rec.seen) == 2  # one refresh, one retry, no loop


@pytest.mark.parametrize("kind", ["s3", "s3lean"])
def test_expired_token_with_static_keys_fails_at_once(aws_home, recording_server, bucket, kind):
    server, rec = recording_server
    rec.fail(lambda e: True, 400, "ExpiredToken")
    cls = LeanS3Store if kind == "s3lean" else S3Store
    store = cls(bucket, endpoint_url=server.endpoint_url, aws_access_key_id="AKIASTATIC000001",
                aws_secret_access_key="static-secret", retry=FAST)
    with pytest.raises(S3AccessDeniedError, match="ExpiredToken") as info:
        store.get("k")
    assert "static-secret" not in str(info.value) and "AKIA****" in str(info.value)
    assert len(rec.seen) == 1


# ------------------------------------------------------------------------------ what travels
@pytest.mark.parametrize("kind", ["s3", "s3lean"])
def test_only_the_source_travels_except_explicit_keys(aws_home, tmp_path, kind):
    cls = LeanS3Store if kind == "s3lean" else S3Store
    cred_file = tmp_path / "creds.json"
    cred_file.write_text(json.dumps({"access_key": "AKIAFROMFILE0001", "secret": "file-secret"}))
    aws_home.credentials("[default]\naws_access_key_id = AKIAFROMPROFILE1\naws_secret_access_key = profile-secret\n")
    aws_home.monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    aws_home.monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENV00001")
    endpoint = "http://127.0.0.1:9"
    for store, hidden in ((cls("b", endpoint_url=endpoint, credential_file=cred_file), "file-secret"),
                          (cls("b", endpoint_url=endpoint), "env-secret"),
                          (cls("b", endpoint_url=endpoint, profile_name="default"), "profile-secret")):
        blob = pickle.dumps(store)
        assert hidden.encode() not in blob and b"AKIAFROM" not in blob
        assert hidden not in repr(store) + repr(store.credentials)
    explicit = cls("b", endpoint_url=endpoint, aws_access_key_id="AKIAEXPLICIT0001", aws_secret_access_key="code-secret")
    assert b"code-secret" in pickle.dumps(explicit)  # documented: keys given in code travel in the pickle
    assert "code-secret" not in repr(explicit) + repr(explicit.credentials)
