"""AWS Signature Version 4 for S3 requests, with hashlib/hmac (the lean client's signer).

The signing key depends only on the secret, the date, the region and the service, so it is
derived once per UTC day and secret; each request then costs two SHA-256 and one HMAC over
short strings. Checked against AWS's documented example and against botocore's own signer
(``tests/bench/test_s3_lean.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any
from urllib.parse import quote

__all__ = ["S3Credentials", "SigV4Signer", "UNSIGNED_PAYLOAD", "EMPTY_SHA256", "uri_encode", "uri_encode_path"]

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class S3Credentials:
    """Access key, secret and optional session token. ``repr`` never shows the secret."""

    __slots__ = ("access_key", "secret_key", "token")

    def __init__(self, access_key: str, secret_key: str, token: str | None = None) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.token = token

    def __repr__(self) -> str:
        return f"S3Credentials(access_key={self.access_key[:4]}..., secret=***)"

    def __getstate__(self) -> tuple:
        return (self.access_key, self.secret_key, self.token)

    def __setstate__(self, state: tuple) -> None:
        self.access_key, self.secret_key, self.token = state


def uri_encode_path(path: str) -> str:
    # RFC 3986 unreserved characters stay; "/" separates segments (S3 does not double-encode).
    return quote(path, safe="/~")


def uri_encode(value: str) -> str:
    return quote(value, safe="~")


class SigV4Signer:
    """AWS Signature Version 4 for one service and region.

    The signing key depends only on the secret, the date, the region and the service, so it is
    derived once per UTC day; each request then costs two SHA-256 and one HMAC over short strings.
    """

    def __init__(self, credentials: Any, region: str, service: str = "s3") -> None:
        self.credentials = credentials  # default keys for sign(); each call may pass its own
        self.region = region
        self.service = service
        self._key_for: tuple[str, str] = ("", "")  # (secret, datestamp) of the cached key
        self._key = b""
        self._scope_tail = f"/{region}/{service}/aws4_request"

    def signing_key(self, datestamp: str, secret_key: str | None = None) -> bytes:
        secret = self.credentials.secret_key if secret_key is None else secret_key
        cached = self._key_for
        if cached[1] != datestamp or cached[0] != secret:
            k = hmac.digest(("AWS4" + secret).encode(), datestamp.encode(), "sha256")
            k = hmac.digest(k, self.region.encode(), "sha256")
            k = hmac.digest(k, self.service.encode(), "sha256")
            key = hmac.digest(k, b"aws4_request", "sha256")
            self._key, self._key_for = key, (secret, datestamp)  # NOTE: threads may race here; both values are right
            return key
        return self._key

    def sign(self, method: str, host: str, path: str, query: dict[str, str] | None, headers: dict[str, str],
             payload_hash: str = UNSIGNED_PAYLOAD, amz_date: str | None = None, *,
             credentials: Any = None) -> dict[str, str]:
        """Return ``headers`` plus ``x-amz-date``, ``x-amz-content-sha256``, the session token and
        ``Authorization``. ``path`` is already URI-encoded; ``headers`` (lower-case names) are all
        signed, along with ``host``. ``credentials`` (``access_key``, ``secret_key``, ``token``) are
        this request's keys; the default is the signer's own."""
        creds = self.credentials if credentials is None else credentials
        if amz_date is None:
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out = dict(headers)
        out["x-amz-date"] = amz_date
        out["x-amz-content-sha256"] = payload_hash
        if creds.token:
            out["x-amz-security-token"] = creds.token
        signed = dict(out)
        signed["host"] = host
        names = sorted(signed)
        canonical_headers = "".join(f"{n}:{' '.join(str(signed[n]).split())}\n" for n in names)
        signed_headers = ";".join(names)
        canonical_query = "&".join(
            f"{uri_encode(k)}={uri_encode(v)}" for k, v in sorted((query or {}).items()))
        canonical = f"{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
        datestamp = amz_date[:8]
        scope = datestamp + self._scope_tail
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self.signing_key(datestamp, creds.secret_key), to_sign.encode(), hashlib.sha256).hexdigest()
        out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                f"SignedHeaders={signed_headers}, Signature={signature}")
        return out
