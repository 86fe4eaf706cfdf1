"""A lean S3 client: SigV4 signing with hashlib/hmac and raw HTTP/1.1 on pooled keep-alive sockets.

Why: botocore/aiobotocore spend about as much CPU per GET (parameter validation, event hooks,
model-driven serialisation and parsing) as decoding the JPEG it returns. A data loader only
needs "GET these bytes", so this client signs once per request with a signing key derived
once per day and region, writes the request line and four headers, and reads
``Content-Length`` bytes back. The sync path (fetch threads) uses blocking sockets; the async
path (the asyncio fetcher) uses an :class:`asyncio.Protocol` per connection on the running loop.

:class:`LeanS3Store` is the :class:`~concurrent_dataloader.storage.base.ByteStore` on top, for
``s3lean://bucket/prefix`` URLs. Endpoint, region, addressing style (path or virtual-hosted), CA
bundle and credentials are resolved by botocore (:mod:`.aws_config`), once per process; only the
per-request work is ours.

See NOTE [ Fork safety ] (``concurrent_dataloader/__init__.py``): sockets, pools and the
credential provider are created lazily and keyed on ``os.getpid()`` (and, for the async pool, on
the event loop), and are dropped when the store is pickled. What travels is configuration: the
resolved endpoint per bucket and the :class:`~.aws_config.CredentialSource` (a profile name or
file path; keys only when they were given explicitly in code). Keys never appear in ``repr`` or
error messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
import ssl
import threading
import time
import weakref
from typing import Any, Iterator
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

from .aws_config import CredentialProvider, CredentialSource, S3Target, botocore_session, resolve_ca_bundle, resolve_target
from .base import ByteRange, ByteStore, register_store
from .url import parse_store_url
from .retry import RetryCounters, RetryPolicy
from .s3 import (_AUTH_CODES, BucketNotFoundError, ObjectNotFoundError, S3AccessDeniedError, S3Error,
                 check_max_object_bytes, mask_access_key)

__all__ = ["LeanS3Client", "LeanS3Store", "SigV4Signer", "S3Credentials", "S3HTTPError", "UNSIGNED_PAYLOAD"]

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_RECV = 256 * 1024


# ---------------------------------------------------------------------------------------------
# Errors: the same types as the botocore-based store, so callers catch one set of exceptions
# ---------------------------------------------------------------------------------------------

class S3HTTPError(S3Error):
    """An S3 error response not translated to a more specific type. ``status`` and ``code`` (e.g.
    ``SlowDown``) say which (see :class:`~.s3.S3Error`)."""

    def __init__(self, message: str, url: str | None = None, status: int = 0, code: str = "") -> None:
        super().__init__(message, url, status=status, code=code)


def _parse_error_body(body: bytes) -> tuple[str, str]:
    if not body:
        return "", ""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return "", body[:200].decode("utf-8", "replace")
    return root.findtext("Code") or "", root.findtext("Message") or ""


# ---------------------------------------------------------------------------------------------
# SigV4
# ---------------------------------------------------------------------------------------------

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


def _uri_encode_path(path: str) -> str:
    # RFC 3986 unreserved characters stay; "/" separates segments (S3 does not double-encode).
    return quote(path, safe="/~")


def _uri_encode(value: str) -> str:
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
            f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in sorted((query or {}).items()))
        canonical = f"{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
        datestamp = amz_date[:8]
        scope = datestamp + self._scope_tail
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self.signing_key(datestamp, creds.secret_key), to_sign.encode(), hashlib.sha256).hexdigest()
        out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                                f"SignedHeaders={signed_headers}, Signature={signature}")
        return out


# ---------------------------------------------------------------------------------------------
# HTTP/1.1
# ---------------------------------------------------------------------------------------------

class _TooLarge(OSError):
    """The response body is larger than ``max_object_bytes`` (re-raised naming the key)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"response body of {size} bytes")
        self.size = size


class _ResponseParser:
    """Incremental HTTP/1.1 response parser (Content-Length, chunked, or read-until-close)."""

    __slots__ = ("head_only", "buf", "status", "headers", "parts", "remaining", "mode", "done", "keep_alive",
                 "got_bytes", "limit")

    def __init__(self, head_only: bool, limit: int | None = None) -> None:
        self.head_only = head_only
        self.limit = limit  # max body bytes of a 2xx answer (max_object_bytes), or None
        self.buf = bytearray()
        self.status = 0
        self.headers: dict[str, str] = {}
        self.parts: list[bytes] = []
        self.remaining = 0
        self.mode = ""  # "", "length", "chunked", "close"
        self.done = False
        self.keep_alive = True
        self.got_bytes = False

    def feed(self, data: bytes) -> bool:
        self.got_bytes = True
        if self.mode == "length":
            n = len(data)
            if n > self.remaining:
                raise ConnectionError(f"server sent {n - self.remaining} bytes more than Content-Length")
            self.parts.append(data)
            self.remaining -= n
            if self.remaining == 0:
                self.done = True
            return self.done
        self.buf += data
        if not self.mode:
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > 65536:
                        raise ConnectionError("response header too large")
                    return False
                lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
                del self.buf[:end + 4]
                parts = lines[0].split(" ", 2)
                try:
                    status = int(parts[1])
                except (IndexError, ValueError):
                    raise ConnectionError(f"bad HTTP status line {lines[0][:80]!r}") from None
                if 100 <= status < 200:  # 100 Continue: the real response follows
                    continue
                self.status = status
                h = self.headers
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    h[name.strip().lower()] = value.strip()
                if parts[0] == "HTTP/1.0" or h.get("connection", "").lower() == "close":
                    self.keep_alive = False
                break
            h = self.headers
            if self.head_only or self.status in (204, 304):
                self.done = True
                return True
            if "chunked" in h.get("transfer-encoding", "").lower():
                self.mode = "chunked"
            elif "content-length" in h:
                self.mode = "length"
                self.remaining = int(h["content-length"])
                if self.limit is not None and self.remaining > self.limit and self.status < 300:
                    raise _TooLarge(self.remaining)
                data = bytes(self.buf)
                self.buf = bytearray()
                if not self.remaining and not data:
                    self.done = True
                    return True
                return self.feed(data) if data else False
            else:
                self.mode = "close"
                self.keep_alive = False
                return False
        if self.limit is not None and len(self.buf) > self.limit + 65536 and self.status < 300:
            raise _TooLarge(len(self.buf))  # chunked / read-until-close: no size up front
        if self.mode == "chunked":
            body = _dechunk(self.buf)
            if body is not None:
                self.parts = [body]
                self.done = True
        return self.done

    def eof(self) -> None:
        """The server closed the connection."""
        if self.mode == "close":
            self.parts = [bytes(self.buf)]
            self.done = True
        elif not self.done:
            raise ConnectionError("connection closed before the response was complete"
                                  + (f" ({self.remaining} body bytes missing)" if self.mode == "length" else ""))

    def body(self) -> bytes:
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)


def _dechunk(buf: bytearray) -> bytes | None:
    out = bytearray()
    pos = 0
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ConnectionError("bad chunked encoding from server") from None
        pos = eol + 2
        if size == 0:
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return bytes(out)
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos:pos + size]
        pos += size + 2


class _SyncConn:
    __slots__ = ("sock", "reused", "got_bytes", "addr")

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, timeout: float) -> None:
        self.addr = (host, port)
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = tls.wrap_socket(sock, server_hostname=host) if tls is not None else sock
        self.reused = False
        self.got_bytes = False  # did the last request get any response byte (not a stale socket)?

    def request(self, raw: bytes, body: bytes | None, head_only: bool, timeout: float,
                limit: int | None = None) -> _ResponseParser:
        sock = self.sock
        sock.settimeout(timeout)
        self.got_bytes = False
        if body:
            sock.sendall(raw + body if len(body) < 65536 else raw)
            if len(body) >= 65536:
                sock.sendall(body)
        else:
            sock.sendall(raw)
        parser = _ResponseParser(head_only, limit)
        recv = sock.recv
        while True:
            data = recv(_RECV)
            if not data:
                parser.eof()
                return parser
            self.got_bytes = True
            if parser.feed(data):
                return parser

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _AsyncConn(asyncio.Protocol):
    __slots__ = ("transport", "parser", "waiter", "broken", "reused", "loop", "timer", "got_bytes", "addr")

    def __init__(self, loop: asyncio.AbstractEventLoop, addr: tuple[str, int]) -> None:
        self.loop = loop
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.parser: _ResponseParser | None = None
        self.waiter: asyncio.Future | None = None
        self.broken = False
        self.reused = False
        self.timer: asyncio.TimerHandle | None = None
        self.got_bytes = False  # did the last request get any response byte (not a stale socket)?

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser, waiter = self.parser, self.waiter
        if parser is None or waiter is None or waiter.done():
            self.broken = True  # unsolicited bytes: this connection cannot be trusted any more
            return
        self.got_bytes = True
        try:
            if parser.feed(data):
                waiter.set_result(parser)
        except OSError as exc:  # a protocol error, or the body is over max_object_bytes
            self.broken = True
            waiter.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        parser, waiter = self.parser, self.waiter
        if waiter is not None and not waiter.done():
            try:
                parser.eof()  # type: ignore[union-attr]
                waiter.set_result(parser)
            except ConnectionError as err:
                waiter.set_exception(err)

    def _timeout(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError("S3 request timed out"))
        self.broken = True
        if self.transport is not None:
            self.transport.abort()

    async def request(self, raw: bytes, body: bytes | None, head_only: bool, timeout: float,
                      limit: int | None = None) -> _ResponseParser:
        self.parser = _ResponseParser(head_only, limit)
        self.got_bytes = False
        self.waiter = self.loop.create_future()
        # NOTE: one timer per request instead of asyncio.wait_for, which costs a task each time.
        self.timer = self.loop.call_later(timeout, self._timeout)
        try:
            self.transport.write(raw)  # type: ignore[union-attr]
            if body:
                self.transport.write(body)  # type: ignore[union-attr]
            return await self.waiter
        finally:
            self.timer.cancel()
            self.parser = None
            self.waiter = None

    def close(self) -> None:
        self.broken = True
        if self.transport is not None:
            self.transport.close()


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------

class _AsyncPool:
    __slots__ = ("idle", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.idle: dict[tuple[str, int], list[_AsyncConn]] = {}


class LeanS3Client:
    """Signed raw-HTTP S3 requests over keep-alive connection pools (one for threads, one per event loop).

    Options mirror :class:`~concurrent_dataloader.storage.s3.S3Store`. Configuration is botocore's
    (see :mod:`.aws_config`): ``endpoint_url``/``region_name`` arguments, else ``AWS_ENDPOINT_URL_S3``,
    ``AWS_ENDPOINT_URL``, the profile's ``services`` section or ``endpoint_url``, else AWS for the
    region; ``addressing_style`` ``"path"``, ``"virtual"`` or ``"auto"``/``None`` as botocore picks
    it; ``verify`` ``None`` (``AWS_CA_BUNDLE``/the profile's ``ca_bundle``, else botocore's bundle),
    ``False`` or a CA-bundle path. Credentials: explicit keys, ``credential_file`` (the seed's JSON),
    or botocore's chain for ``profile_name``, re-read per request so expiring keys are refreshed.

    ``max_pool_connections`` bounds the *idle* connections kept per pool; concurrency itself is set
    by the caller (fetch threads or tasks) and each concurrent request uses its own socket. Transient
    failures (see :mod:`.retry`) are retried by ``retry`` and counted in :attr:`retry_counters`;
    ``ExpiredToken`` makes the client resolve its credentials again and retry once. A pooled
    keep-alive socket that the server already closed (before any byte of the answer arrived) is
    replaced at once without counting as a retry. ``max_object_bytes`` and ``verify_etag`` work as
    in ``S3Store``.
    """

    def __init__(self, endpoint_url: str | None = None, region_name: str | None = None, *,
                 aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                 aws_session_token: str | None = None, profile_name: str | None = None,
                 credential_file: str | os.PathLike | None = None, anonymous: bool = False,
                 max_pool_connections: int = 64, retry: RetryPolicy | None = None, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, verify: bool | str | None = None, addressing_style: str | None = None,
                 list_page_size: int = 1000, max_object_bytes: int | None = None, verify_etag: bool = False) -> None:
        from ..errors import ConfigError

        if addressing_style not in (None, "auto", "path", "virtual"):
            raise ConfigError(f"addressing_style must be 'path', 'virtual', 'auto' or None, got {addressing_style!r}")
        if endpoint_url is not None:
            parts = urlsplit(endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"endpoint_url must be http(s)://host[:port], got {endpoint_url!r}")
        self.credentials = CredentialSource(aws_access_key_id=aws_access_key_id,
                                            aws_secret_access_key=aws_secret_access_key,
                                            aws_session_token=aws_session_token, credential_file=credential_file,
                                            profile_name=profile_name, anonymous=anonymous)
        self.addressing_style = addressing_style
        self.profile_name = profile_name
        self._endpoint_arg = endpoint_url
        self._region_arg = region_name
        self.max_pool_connections = max_pool_connections
        self.retry = retry if retry is not None else RetryPolicy()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.verify = verify
        self.anonymous = anonymous
        self.list_page_size = list_page_size
        self.max_object_bytes = check_max_object_bytes(max_object_bytes)
        self.verify_etag = bool(verify_etag)
        self._targets: dict[str, S3Target] = {}  # bucket -> where its requests go (plain data, pickled)
        self._init_process_state()
        # Resolved here, in the process that builds the client, and pickled as plain data: the
        # endpoint, region and CA bundle are configuration, not secrets.
        probe = self._target("cdl-endpoint-probe")
        self.endpoint_url = probe.endpoint_url.rstrip("/")
        self.region = probe.region
        self.ca_bundle = resolve_ca_bundle(verify, self._botocore_session())

    # -- pickling / fork ------------------------------------------------------------------------
    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._sync_idle: dict[tuple[str, int], list[_SyncConn]] = {}
        self._async_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncPool]" = \
            weakref.WeakKeyDictionary()
        self._ssl: ssl.SSLContext | None = None
        self._provider: CredentialProvider | None = None
        self._session: Any = None
        self._signers: dict[str, SigV4Signer] = {}
        self.retry_counters = RetryCounters()

    _PROCESS_STATE = ("_pid", "_lock", "_sync_idle", "_async_pools", "_ssl", "_provider", "_session", "_signers",
                      "retry_counters")

    def __getstate__(self) -> dict:
        # NOTE: the CredentialSource pickles only where keys come from (a profile name, a file
        # path), except keys given explicitly in code, which travel as given (docs/datasets.md).
        state = dict(self.__dict__)
        for name in self._PROCESS_STATE:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_process_state()

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            # NOTE: forked child. Inherited sockets belong to the parent: forget them, never close.
            self._init_process_state()

    def _botocore_session(self) -> Any:
        if self._session is None:
            self._session = botocore_session(self.profile_name)
        return self._session

    def _target(self, bucket: str) -> S3Target:
        """Where requests for ``bucket`` go, as botocore would send them (resolved once per bucket)."""
        target = self._targets.get(bucket)
        if target is None:
            with self._lock:
                target = self._targets.get(bucket)
                if target is None:
                    target = resolve_target(bucket, endpoint_url=self._endpoint_arg, region_name=self._region_arg,
                                            addressing_style=self.addressing_style, session=self._botocore_session())
                    self._targets[bucket] = target
        return target

    def _credentials(self) -> Any:
        """The keys for this request (``None``: anonymous). Cheap: see :class:`CredentialProvider`."""
        if self.anonymous:
            return None
        provider = self._provider
        if provider is None:
            self._check_pid()
            with self._lock:
                if self._provider is None:
                    self._provider = self.credentials.provider()
                provider = self._provider
        return provider.current()

    def _refresh_credentials(self) -> bool:
        """After ``ExpiredToken``: resolve the keys again. ``False`` if they cannot change."""
        provider = self._provider
        return provider.refresh() if provider is not None else False

    def _signer(self, region: str) -> SigV4Signer:
        signer = self._signers.get(region)
        if signer is None:
            signer = self._signers[region] = SigV4Signer(None, region)
        return signer

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if self.ca_bundle is False:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            else:
                ctx = ssl.create_default_context(cafile=self.ca_bundle if isinstance(self.ca_bundle, str) else None)
            self._ssl = ctx
        return self._ssl

    # -- request building and errors ------------------------------------------------------------
    def _build(self, target: S3Target, method: str, key: str | None, query: dict[str, str] | None,
               headers: dict[str, str] | None, body: bytes | None) -> bytes:
        path = target.path_prefix + ("/" + _uri_encode_path(key) if key else "") or "/"
        hdrs = headers or {}
        host_header = target.host_header
        creds = self._credentials()
        if creds is not None:
            if body:
                payload_hash = hashlib.sha256(body).hexdigest()
            else:
                payload_hash = _EMPTY_SHA256 if method in ("PUT", "POST") else UNSIGNED_PAYLOAD
            hdrs = self._signer(target.region).sign(method, host_header, path, query, hdrs, payload_hash,
                                                    credentials=creds)
        target_path = path
        if query:
            target_path += "?" + "&".join(f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in sorted(query.items()))
        lines = [f"{method} {target_path} HTTP/1.1\r\nHost: {host_header}\r\n"]
        for k, v in hdrs.items():
            lines.append(f"{k}: {v}\r\n")
        if body is not None or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {len(body or b'')}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def _error(self, parser: _ResponseParser, bucket: str, key: str | None) -> Exception:
        """Translate an error status into the store error types, naming s3://bucket/key."""
        status = parser.status
        code, message = _parse_error_body(parser.body())
        code = code or f"HTTP{status}"
        where = f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"
        endpoint = f" at {self.endpoint_url}"
        if code == "NoSuchBucket" or (status == 404 and key is None):
            return BucketNotFoundError(f"{where}: bucket {bucket!r} does not exist{endpoint}", f"s3://{bucket}",
                                       status=status, code=code)
        if status == 404:
            return ObjectNotFoundError(f"{where}: no such object{endpoint}", where, status=status, code=code)
        if status == 403 or code in _AUTH_CODES:
            try:
                creds = self._credentials()
            except Exception:
                creds = None
            return S3AccessDeniedError(
                f"{where}: access denied ({code}) for access key "
                f"{mask_access_key(getattr(creds, 'access_key', None))} ({self.credentials.describe()}){endpoint}; "
                "check the credentials and the bucket policy", where, status=status, code=code)
        return S3HTTPError(f"{where}: HTTP {status} {code}" + (f": {message}" if message else "") + endpoint,
                           where, status, code)

    # -- sync -----------------------------------------------------------------------------------
    def _sync_acquire(self, target: S3Target) -> _SyncConn:
        self._check_pid()
        addr = (target.host, target.port)
        with self._lock:
            idle = self._sync_idle.get(addr)
            if idle:
                conn = idle.pop()
                conn.reused = True
                return conn
        return _SyncConn(target.host, target.port, self._tls_context() if target.tls else None, self.connect_timeout)

    def _sync_release(self, conn: _SyncConn, keep: bool) -> None:
        if keep:
            with self._lock:
                idle = self._sync_idle.setdefault(conn.addr, [])
                if len(idle) < self.max_pool_connections:
                    idle.append(conn)
                    return
        conn.close()

    def _request_once(self, method: str, bucket: str, key: str | None, query: dict[str, str] | None,
                      headers: dict[str, str] | None, body: bytes | None, get: bool = False) -> _ResponseParser:
        limit = self.max_object_bytes if get else None
        target = self._targets.get(bucket) or self._target(bucket)
        while True:
            raw = self._build(target, method, key, query, headers, body)
            conn = self._sync_acquire(target)
            try:
                parser = conn.request(raw, body, method == "HEAD", self.read_timeout, limit)
            except _TooLarge as exc:
                conn.close()
                raise self._too_large(bucket, key, exc.size) from None
            except OSError as exc:
                conn.close()
                if conn.reused and isinstance(exc, ConnectionError) and not conn.got_bytes:
                    continue  # a pooled socket the server had closed before answering: try a fresh one
                raise
            except BaseException:
                conn.close()
                raise
            self._sync_release(conn, parser.keep_alive)
            return self._checked(parser, bucket, key, get)

    def _checked(self, parser: "_ResponseParser", bucket: str, key: str | None, get: bool) -> "_ResponseParser":
        """Shared tail of the sync and async request paths: error statuses raise, GETs are verified."""
        if parser.status >= 300:
            raise self._error(parser, bucket, key)
        if get:
            self._verify(parser, bucket, key)
        return parser

    def _too_large(self, bucket: str, key: str | None, size: int) -> Exception:
        from ..errors import ObjectTooLargeError

        where = f"s3://{bucket}/{key}"
        return ObjectTooLargeError(f"{where}: object of {size} bytes is larger than max_object_bytes="
                                   f"{self.max_object_bytes}; refusing to read it", key=where)

    def _verify(self, parser: _ResponseParser, bucket: str, key: str | None) -> None:
        """With ``verify_etag``: a whole-object body must hash to its single-part (MD5) ETag."""
        if not self.verify_etag or parser.status != 200:
            return
        from .s3 import check_etag

        check_etag(parser.body(), parser.headers.get("etag"), f"s3://{bucket}/{key}")

    def request(self, method: str, bucket: str, key: str | None = None, *, query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: bytes | None = None) -> _ResponseParser:
        """One signed request (blocking), retried per :attr:`retry`; error statuses raise."""
        return self.retry.call(lambda: self._request_once(method, bucket, key, query, headers, body),
                               self.retry_counters, refresh=self._refresh_credentials)

    def get_object(self, bucket: str, key: str, byte_range: ByteRange | None = None) -> bytes:
        if byte_range is not None and byte_range[1] == 0:
            return b""
        headers = _range_header(byte_range)
        try:
            parser = self.retry.call(lambda: self._request_once("GET", bucket, key, None, headers, None, True),
                                     self.retry_counters, refresh=self._refresh_credentials)
        except S3HTTPError as exc:
            raise _range_error(exc, byte_range) from None
        return _range_body(parser, byte_range, f"s3://{bucket}/{key}")

    def head_object(self, bucket: str, key: str) -> dict[str, str]:
        return self.request("HEAD", bucket, key).headers

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        try:
            self.request("PUT", bucket, key, body=bytes(data))
        except ObjectNotFoundError:  # a 404 on PUT can only be the bucket
            raise BucketNotFoundError(f"s3://{bucket}: bucket does not exist at {self.endpoint_url}",
                                      f"s3://{bucket}") from None

    def create_bucket(self, bucket: str) -> None:
        self.request("PUT", bucket, body=b"")

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) for every object under ``prefix``, in key order (ListObjectsV2, paginated)."""
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(self.list_page_size)}
            if token:
                query["continuation-token"] = token
            root = ElementTree.fromstring(self.request("GET", bucket, query=query).body())
            ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for item in root.iter(f"{ns}Contents"):
                yield item.findtext(f"{ns}Key") or "", int(item.findtext(f"{ns}Size") or 0)
            token = root.findtext(f"{ns}NextContinuationToken")
            if (root.findtext(f"{ns}IsTruncated") or "").lower() != "true" or not token:
                return

    # -- async ----------------------------------------------------------------------------------
    async def _async_acquire(self, target: S3Target) -> _AsyncConn:
        self._check_pid()
        loop = asyncio.get_running_loop()
        pool = self._async_pools.get(loop)
        if pool is None:
            pool = self._async_pools[loop] = _AsyncPool(loop)
        addr = (target.host, target.port)
        idle = pool.idle.get(addr)
        while idle:
            conn = idle.pop()
            if not conn.broken:
                conn.reused = True
                return conn
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _AsyncConn(loop, addr), target.host, target.port,
                                   ssl=self._tls_context() if target.tls else None,
                                   server_hostname=target.host if target.tls else None),
            self.connect_timeout)
        return conn

    def _async_release(self, conn: _AsyncConn, keep: bool) -> None:
        pool = self._async_pools.get(conn.loop)
        if keep and not conn.broken and pool is not None:
            idle = pool.idle.setdefault(conn.addr, [])
            if len(idle) < self.max_pool_connections:
                idle.append(conn)
                return
        conn.close()

    async def _arequest_once(self, method: str, bucket: str, key: str | None, query: dict[str, str] | None,
                             headers: dict[str, str] | None, body: bytes | None, get: bool = False) -> _ResponseParser:
        limit = self.max_object_bytes if get else None
        target = self._targets.get(bucket) or self._target(bucket)
        while True:
            raw = self._build(target, method, key, query, headers, body)
            conn = await self._async_acquire(target)
            try:
                parser = await conn.request(raw, body, method == "HEAD", self.read_timeout, limit)
            except _TooLarge as exc:
                conn.close()
                raise self._too_large(bucket, key, exc.size) from None
            except OSError as exc:
                conn.close()
                if conn.reused and isinstance(exc, ConnectionError) and not conn.got_bytes:
                    continue
                raise
            except BaseException:  # cancelled mid-request: the socket's state is unknown
                conn.close()
                raise
            self._async_release(conn, parser.keep_alive)
            return self._checked(parser, bucket, key, get)

    async def arequest(self, method: str, bucket: str, key: str | None = None, *,
                       query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                       body: bytes | None = None) -> _ResponseParser:
        """:meth:`request` on the running event loop."""
        return await self.retry.acall(lambda: self._arequest_once(method, bucket, key, query, headers, body),
                                      self.retry_counters, refresh=self._refresh_credentials)

    async def aget_object(self, bucket: str, key: str, byte_range: ByteRange | None = None) -> bytes:
        if byte_range is not None and byte_range[1] == 0:
            return b""
        headers = _range_header(byte_range)
        try:
            parser = await self.retry.acall(
                lambda: self._arequest_once("GET", bucket, key, None, headers, None, True), self.retry_counters,
                refresh=self._refresh_credentials)
        except S3HTTPError as exc:
            raise _range_error(exc, byte_range) from None
        return _range_body(parser, byte_range, f"s3://{bucket}/{key}")

    # -- cleanup --------------------------------------------------------------------------------
    def close(self) -> None:
        """Close this process's pooled sockets (the client stays usable; they reopen lazily)."""
        if self._pid != os.getpid():
            return
        with self._lock:
            idle, self._sync_idle = self._sync_idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        for pool in list(self._async_pools.values()):
            if pool.loop.is_closed():
                continue
            idle_async, pool.idle = pool.idle, {}
            for conn in (c for conns in idle_async.values() for c in conns):
                try:  # NOTE: transports belong to their loop's thread
                    pool.loop.call_soon_threadsafe(conn.close)
                except RuntimeError:
                    pass

    async def aclose(self) -> None:
        """Close the pooled connections of the running loop."""
        pool = self._async_pools.get(asyncio.get_running_loop())
        if pool is not None:
            idle, pool.idle = pool.idle, {}
            for conns in idle.values():
                for conn in conns:
                    conn.close()

    def __repr__(self) -> str:
        return f"LeanS3Client(endpoint_url={self.endpoint_url!r}, region={self.region!r})"


def _range_header(byte_range: ByteRange | None) -> dict[str, str] | None:
    if byte_range is None:
        return None
    offset, length = byte_range
    if offset < 0 or length < 0:
        raise ValueError(f"invalid byte range offset={offset}, length={length}")
    return {"range": f"bytes={offset}-{offset + length - 1}"}


def _range_error(exc: S3HTTPError, byte_range: ByteRange | None) -> Exception:
    if exc.status == 416 and byte_range is not None:
        return EOFError(f"{exc.url}: byte range starting at {byte_range[0]} is beyond the end of the object")
    return exc


def _range_body(parser: _ResponseParser, byte_range: ByteRange | None, where: str) -> bytes:
    data = parser.body()
    if byte_range is None:
        return data
    offset, length = byte_range
    if parser.status == 200:  # the server ignored Range: cut it here
        data = data[offset:offset + length]
    if len(data) != length:
        raise EOFError(f"{where}: wanted {length} bytes at offset {offset}, got {len(data)} (object too short)")
    return data


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------

class LeanS3Store(ByteStore):
    """A :class:`ByteStore` over :class:`LeanS3Client`, for ``s3lean://bucket/prefix`` URLs.

    Takes the keyword options of the botocore-based ``S3Store`` (``endpoint_url``,
    ``region_name``, ``addressing_style``, ``verify``, ``profile_name``, ``credential_file``,
    ``aws_access_key_id``, ``aws_secret_access_key``, ``max_pool_connections``, ``retry``...) and
    raises the same error types, so the two are interchangeable; this one costs a fraction of the
    CPU per GET.
    """

    def __init__(self, bucket: str, prefix: str = "", **options: Any) -> None:
        from ..errors import ConfigError

        if not bucket or "/" in bucket:
            raise ConfigError(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = prefix.lstrip("/")
        self.client = LeanS3Client(**options)
        self.client._target(bucket)  # resolved here, so workers inherit it (no botocore work in them)

    @property
    def retry_counters(self) -> RetryCounters:
        return self.client.retry_counters

    @property
    def credentials(self) -> CredentialSource:
        return self.client.credentials

    def full_key(self, key: str) -> str:
        if not self.prefix:
            return key
        return self.prefix + key if self.prefix.endswith("/") else f"{self.prefix}/{key}"

    def get(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        return self.client.get_object(self.bucket, self.full_key(key), byte_range)

    async def aget(self, key: str, byte_range: ByteRange | None = None) -> bytes:
        return await self.client.aget_object(self.bucket, self.full_key(key), byte_range)

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` (relative to the store's prefix), sorted."""
        root = self.full_key("") if self.prefix else ""
        return iter(sorted(k[len(root):] for k, _ in self.client.list_objects(self.bucket, root + prefix)))

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(self.bucket, self.full_key(key), data)

    def size(self, key: str) -> int:
        return int(self.client.head_object(self.bucket, self.full_key(key))["content-length"])

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def check(self) -> None:
        """One HeadBucket: a missing bucket or bad credentials fail now, not in the first batch."""
        self.client.request("HEAD", self.bucket)

    def close(self) -> None:
        self.client.close()

    async def aclose(self) -> None:
        await self.client.aclose()

    def __repr__(self) -> str:
        return f"LeanS3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.client.endpoint_url!r})"


def _from_url(url: str, **options: Any) -> LeanS3Store:
    u = parse_store_url(url)
    return LeanS3Store(u.bucket, u.key, **options)


register_store("s3lean", _from_url)
