"""One error translator for both S3 clients: the same answer from a real server raises the same
exception type with the same message, whichever client made the request."""

from __future__ import annotations

import pickle

import pytest

from concurrent_dataloader.storage.retry import RetryPolicy
from concurrent_dataloader.storage.s3 import (BucketNotFoundError, ObjectNotFoundError, S3AccessDeniedError,
                                              S3HTTPError, S3Store)
from concurrent_dataloader.storage.s3_http import LeanS3Store

ONCE = RetryPolicy(max_attempts=1)
KEYS = {"aws_access_key_id": "AKIAERRORS000001", "aws_secret_access_key": "errors-secret"}


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the test compares what each client raises
        return exc
    raise AssertionError("no exception")


CASES = {
    "missing key": (None, lambda s: s.get("nope"), ObjectNotFoundError),
    "missing bucket (GET)": ("other", lambda s: s.get("k"), BucketNotFoundError),
    "missing bucket (HEAD)": ("other", lambda s: s.check(), BucketNotFoundError),
    "missing bucket (PUT)": ("other", lambda s: s.put("k", b"x"), BucketNotFoundError),
    "range past the end": (None, lambda s: s.get("k", (1000, 10)), EOFError),
    "access denied": ("deny", lambda s: s.get("k"), S3AccessDeniedError),
    "not implemented": ("501", lambda s: s.get("k"), S3HTTPError),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_clients_raise_the_same_error(aws_home, recording_server, bucket, case):
    server, rec = recording_server
    which, call, expected = CASES[case]
    if which == "deny":
        rec.fail(lambda e: True, 403, "AccessDenied")
    elif which == "501":
        rec.fail(lambda e: e["method"] == "GET", 501, "NotImplemented")
    name = "no-such-bucket" if which == "other" else bucket
    errors = {}
    for kind, cls in (("s3", S3Store), ("s3lean", LeanS3Store)):
        store = cls(name, endpoint_url=server.endpoint_url, retry=ONCE, **KEYS)
        errors[kind] = _raised(lambda: call(store))
        store.close()
    for kind, exc in errors.items():
        assert type(exc) is expected, (kind, repr(exc))
        assert "errors-secret" not in str(exc) and "AKIAERRORS000001" not in str(exc)
        assert f"s3://{name}" in str(exc)
    if case != "missing bucket (HEAD)":  # a HEAD answer has no body: botocore makes up a message
        assert str(errors["s3"]) == str(errors["s3lean"])
    if isinstance(errors["s3lean"], S3HTTPError | S3AccessDeniedError):
        clone = pickle.loads(pickle.dumps(errors["s3lean"]))  # worker -> main process
        assert (clone.status, clone.code, str(clone)) == (errors["s3lean"].status, errors["s3lean"].code,
                                                          str(errors["s3lean"]))
