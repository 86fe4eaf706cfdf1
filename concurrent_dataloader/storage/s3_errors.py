"""The S3 error types and the one translator from an S3 error answer to them.

Both S3 clients use :func:`translate_s3_error`: the botocore-based
:class:`~.s3.S3Store` with the status and code of a botocore ``ClientError``
(:func:`botocore_error_fields`), the lean client with those of the HTTP answer it parsed
(:func:`parse_error_body`). So a missing key, a missing bucket, wrong credentials or a byte range
past the end raise the same exception, with the same message, whichever client is used. Every
message names ``s3://bucket/key`` and the endpoint, and masks the access key id; no secret can
reach it (the translator is never given one).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from xml.etree import ElementTree

__all__ = [
    "S3Error", "ObjectNotFoundError", "BucketNotFoundError", "S3AccessDeniedError", "ChecksumMismatchError",
    "S3HTTPError", "AUTH_CODES", "translate_s3_error", "botocore_error_fields", "parse_error_body",
    "mask_access_key", "check_etag",
]

# Error codes that mean "these credentials cannot do this".
AUTH_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "ExpiredTokenException", "InvalidClientTokenId", "AuthorizationHeaderMalformed", "AllAccessDisabled", "403",
    "Forbidden",
})


class S3Error(OSError):
    """Base for the S3 errors we translate; ``url`` is ``s3://bucket/key`` (never credentials).

    ``status`` (HTTP) and ``code`` (S3's error code, e.g. ``ExpiredToken``) say what the server
    answered, when it answered; ``response`` gives them in botocore's shape, so the retry policy
    (:func:`~.retry.classify_error`) treats a translated error like a botocore ``ClientError``.
    """

    def __init__(self, message: str, url: str | None = None, *, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.code = code

    @property
    def response(self) -> dict[str, Any] | None:
        if not self.status and not self.code:
            return None
        return {"Error": {"Code": self.code}, "ResponseMetadata": {"HTTPStatusCode": self.status or None}}

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # keep url, status and code across pickling (worker -> main process)
        return (_rebuild_s3_error, (type(self), str(self), self.url, self.status, self.code), self.__dict__)


def _rebuild_s3_error(cls: type, message: str, url: str | None, status: int, code: str) -> "S3Error":
    exc = cls.__new__(cls)
    S3Error.__init__(exc, message, url, status=status, code=code)
    return exc


class ObjectNotFoundError(S3Error, FileNotFoundError):
    """The object does not exist (``NoSuchKey``)."""


class BucketNotFoundError(S3Error, FileNotFoundError):
    """The bucket does not exist (``NoSuchBucket`` / 404 on the bucket)."""


class S3AccessDeniedError(S3Error, PermissionError):
    """Wrong or insufficient credentials. The message masks the access key and never shows the secret."""


class ChecksumMismatchError(S3Error, ConnectionError):
    """The body does not hash to the object's ETag (``verify_etag=True``). A ``ConnectionError``,
    so the retry policy fetches it again: the bytes were damaged on the way."""


class S3HTTPError(S3Error):
    """An S3 error answer that is none of the above (``status`` and ``code`` say which, e.g. 503
    ``SlowDown`` or 501 ``NotImplemented``)."""

    def __init__(self, message: str, url: str | None = None, status: int = 0, code: str = "") -> None:
        super().__init__(message, url, status=status, code=code)


def mask_access_key(access_key: str | None) -> str:
    """Enough of an access key id to tell keys apart in a message, not enough to use it."""
    if not access_key:
        return "<default credential chain>"
    return f"{access_key[:4]}****" if len(access_key) > 8 else "****"


_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})"?$')


def check_etag(data: bytes, etag: str | None, where: str) -> None:
    """Raise :class:`ChecksumMismatchError` if ``etag`` is a single-part (MD5) ETag and ``data``
    does not match it. Multipart ETags (``"...-N"``) and missing ETags cannot be checked."""
    m = _MD5_ETAG.match(etag or "")
    if m is None:
        return
    got = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if got != m.group(1).lower():
        raise ChecksumMismatchError(f"{where}: body of {len(data)} bytes has MD5 {got} but the ETag is "
                                    f"{m.group(1).lower()} (corrupted in transit, or an ETag that is not an MD5, "
                                    "e.g. SSE-KMS; then pass verify_etag=False)", where)


def parse_error_body(body: bytes) -> tuple[str, str]:
    """``(code, message)`` of an S3 XML error body (empty strings when there is none)."""
    if not body:
        return "", ""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return "", body[:200].decode("utf-8", "replace")
    return root.findtext("Code") or "", root.findtext("Message") or ""


def botocore_error_fields(exc: BaseException) -> tuple[int, str, str] | None:
    """``(status, code, message)`` of a botocore ``ClientError``; ``None`` for other exceptions."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict) or isinstance(exc, S3Error):
        return None
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return (status if isinstance(status, int) else 0), str(error.get("Code") or ""), str(error.get("Message") or "")


def translate_s3_error(status: int, code: str, message: str = "", *, bucket: str, key: str | None,
                       endpoint_url: str | None, where: str | None = None, access_key: str | None = None,
                       credential_source: str = "", byte_range: tuple[int, int] | None = None,
                       method: str = "GET") -> Exception:
    """The exception for an S3 error answer.

    ``key`` is the full object key (``None`` for a bucket request); ``where`` overrides the
    ``s3://bucket/key`` named in the message; ``access_key`` is shown masked and
    ``credential_source`` says where the keys came from (never a key itself).
    """
    code = code or (f"HTTP{status}" if status else "")
    where = where or (f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}")
    endpoint = f" at {endpoint_url}" if endpoint_url else ""
    if code == "NoSuchBucket" or (status == 404 and (key is None or method == "PUT")):
        return BucketNotFoundError(f"{where}: bucket {bucket!r} does not exist{endpoint}", f"s3://{bucket}",
                                   status=status, code=code)
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return ObjectNotFoundError(f"{where}: no such object{endpoint}", where, status=status, code=code)
    if code == "InvalidRange" or status == 416:
        offset = byte_range[0] if byte_range else "?"
        return EOFError(f"{where}: byte range starting at {offset} is beyond the end of the object")
    if code in AUTH_CODES or status == 403:
        source = f" ({credential_source})" if credential_source else ""
        return S3AccessDeniedError(
            f"{where}: access denied ({code or status}) for access key {mask_access_key(access_key)}{source}"
            f"{endpoint}; check the credentials (explicit, credential file, environment, ~/.aws) and the bucket "
            "policy", where, status=status, code=code)
    detail = f": {message}" if message else ""
    return S3HTTPError(f"{where}: HTTP {status} {code}{detail}{endpoint}", where, status, code)
