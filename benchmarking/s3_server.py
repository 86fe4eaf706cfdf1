"""A fast, minimal S3-compatible server on 127.0.0.1 with injected latency, for benchmarks.

Why not moto: moto spends ~3.4 ms of CPU per GET and caps near 300 GET/s on two cores, so a
loader that aims at ~400 img/s would measure the server, not itself. This server answers from
memory (or from a directory) with a hand-written HTTP/1.1 parser on uvloop and costs a small
fraction of a millisecond per GET, so the client side is what a benchmark sees.

What it speaks (path-style addressing only, ``http://127.0.0.1:PORT/bucket/key``):
GetObject/HeadObject (with ``Range``), PutObject (plain, ``Transfer-Encoding: chunked`` and
``aws-chunked`` bodies, ``Expect: 100-continue``), DeleteObject, DeleteObjects, CreateBucket,
HeadBucket, DeleteBucket, GetBucketLocation, ListBuckets, ListObjects and ListObjectsV2
(prefix, delimiter, pagination, ``encoding-type=url``). Multipart upload, versioning, ACLs and
copies answer ``501 NotImplemented``. Signatures are never checked: any credentials work.

Latency model: every S3 request waits ``latency_ms`` plus a uniform jitter in
``[-jitter_ms, +jitter_ms]`` (never below zero) before its response starts, with a
non-blocking timer, so thousands of requests can wait at once. ``bandwidth_mb_s`` optionally
caps the bytes per second the server sends, as one shared link.

Counters (requests, per operation, bytes, in-flight and peak in-flight requests, connections,
server CPU time) are read in-process (:meth:`S3Server.stats`) or over the admin endpoint
``GET /_admin/stats``; ``POST /_admin/reset`` zeroes them and ``PUT /_admin/config`` (JSON
body) changes latency/jitter/bandwidth while running. Bucket names cannot start with ``_``,
so the admin paths never collide with S3 paths.

Fault injection is meant to be added as :class:`RequestHook` objects: ``before`` may answer a
request itself (for example ``503 SlowDown``), ``after`` may replace or alter the response, and
the transport honours the response's ``reset``, ``truncate_to``, ``stall_s``/``stall_after``,
``delay_s`` and ``close`` knobs.

Run it::

    python -m benchmarking.s3_server --port 9000 --latency-ms 50 --jitter-ms 5 --data-dir DIR

or in-process: ``with S3Server(latency_ms=50) as server: server.endpoint_url``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import email.utils
import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qsl, quote, unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from concurrent_dataloader._atomic import atomic_write_bytes

__all__ = [
    "S3Server",
    "ServerConfig",
    "ServerProcess",
    "Request",
    "Response",
    "RequestHook",
    "s3_error",
    "main",
]

_S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>\n'
_MAX_HEADER_BYTES = 64 * 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 206: "Partial Content", 400: "Bad Request",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
    411: "Length Required", 416: "Requested Range Not Satisfiable", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
}


# ---------------------------------------------------------------------------------------------
# Requests, responses, hooks
# ---------------------------------------------------------------------------------------------

@dataclass(slots=True)
class Request:
    """One parsed HTTP request. ``path`` is percent-decoded; ``headers`` keys are lower-case."""

    method: str
    target: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    bucket: str | None
    key: str | None
    conn_id: int
    seq: int  # server-wide request number, 1-based
    _params: dict[str, str] | None = None

    @property
    def params(self) -> dict[str, str]:
        if self._params is None:
            self._params = dict(parse_qsl(self.query, keep_blank_values=True))
        return self._params


@dataclass(slots=True)
class Response:
    """A response plus the knobs a fault-injection hook may set; the transport honours them.

    ``content_length`` overrides ``len(body)`` in the header (HEAD answers, truncated bodies).
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | memoryview = b""
    content_length: int | None = None
    op: str = ""
    delay_s: float = 0.0          # extra wait before the response starts
    reset: bool = False           # abort the connection (TCP RST) instead of answering
    truncate_to: int | None = None  # send only this many body bytes, then close
    stall_after: int = 0          # with stall_s: body bytes sent before the pause
    stall_s: float = 0.0          # pause in the middle of the body
    close: bool = False           # close the connection after this response


class RequestHook:
    """Per-request hook (for fault injection). Override either method; both run on the event loop
    and must not block.

    ``before(request)`` runs before the request is handled: return a :class:`Response` to answer
    it without touching the store (e.g. ``s3_error(503, "SlowDown", ...)``), or ``None``.
    ``after(request, response)`` sees the real response: return a replacement, or mutate the
    knobs (``reset``, ``truncate_to``, ``stall_s``...) and return ``None``.
    """

    def before(self, request: Request) -> Response | None:
        return None

    def after(self, request: Request, response: Response) -> Response | None:
        return None


def s3_error(status: int, code: str, message: str, resource: str = "", head: bool = False,
             extra: Iterable[tuple[str, str]] = ()) -> Response:
    """An S3 XML error response (no body for HEAD, as S3 does)."""
    body = b""
    if not head:
        parts = [_XML_DECL, "<Error><Code>", code, "</Code><Message>", escape(message), "</Message>"]
        if resource:
            parts += ["<Resource>", escape(resource), "</Resource>"]
        for k, v in extra:
            parts += [f"<{k}>", escape(v), f"</{k}>"]
        parts.append("</Error>")
        body = "".join(parts).encode()
    return Response(status, [("Content-Type", "application/xml")], body, op="Error")


@dataclass
class ServerConfig:
    """Settings that may change while the server runs (``S3Server.configure`` / admin endpoint)."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_mb_s: float | None = None  # 10**6 bytes per second, shared by all connections

    def validate(self) -> "ServerConfig":
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise ValueError(f"latency_ms and jitter_ms must be >= 0, got {self.latency_ms}, {self.jitter_ms}")
        if self.bandwidth_mb_s is not None and self.bandwidth_mb_s <= 0:
            raise ValueError(f"bandwidth_mb_s must be > 0 or None, got {self.bandwidth_mb_s}")
        return self


# ---------------------------------------------------------------------------------------------
# Storage: in-memory buckets and directory-backed buckets
# ---------------------------------------------------------------------------------------------

def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


def _iso_date(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class _Meta:
    __slots__ = ("size", "etag", "mtime", "last_modified")

    def __init__(self, size: int, etag: str, mtime: float) -> None:
        self.size = size
        self.etag = etag
        self.mtime = mtime
        self.last_modified = _http_date(mtime)


class _MemBucket:
    def __init__(self, name: str) -> None:
        self.name = name
        self.created = time.time()
        self.objects: dict[str, tuple[bytes, _Meta]] = {}
        self._sorted: list[str] | None = None

    def get(self, key: str) -> tuple[bytes, _Meta] | None:
        return self.objects.get(key)

    def head(self, key: str) -> _Meta | None:
        obj = self.objects.get(key)
        return obj[1] if obj is not None else None

    def put(self, key: str, data: bytes) -> _Meta:
        meta = _Meta(len(data), '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"', time.time())
        if key not in self.objects:
            self._sorted = None
        self.objects[key] = (data, meta)
        return meta

    def delete(self, key: str) -> None:
        if self.objects.pop(key, None) is not None:
            self._sorted = None

    def keys(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self.objects)
        return self._sorted

    def __len__(self) -> int:
        return len(self.objects)


class InvalidKeyError(ValueError):
    """A key that cannot name a file inside a directory-backed bucket."""


class _DirBucket:
    """A bucket backed by a directory: key ``a/b.jpg`` is the file ``root/a/b.jpg``.

    Reads are plain blocking reads: objects are small and page-cached, and a thread hop would
    cost more than the read. Writes are atomic (temp file, then ``os.replace``).
    """

    _RESCAN_S = 2.0

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root.resolve()
        self.created = self.root.stat().st_mtime
        self._sorted: list[str] | None = None
        self._scanned_at = 0.0

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
            raise InvalidKeyError(f"key {key!r} cannot be stored in a directory-backed bucket")
        return self.root.joinpath(*parts)

    def _meta(self, st: os.stat_result) -> _Meta:
        return _Meta(st.st_size, f'"{st.st_mtime_ns:x}-{st.st_size:x}"', st.st_mtime)

    def get(self, key: str) -> tuple[bytes, _Meta] | None:
        try:
            path = self._path(key)
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if not _is_regular(st):
                    return None
                data = f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, InvalidKeyError):
            return None
        return data, self._meta(st)

    def head(self, key: str) -> _Meta | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError, InvalidKeyError):
            return None
        return self._meta(st) if _is_regular(st) else None

    def put(self, key: str, data: bytes) -> _Meta:
        path = self._path(key)
        atomic_write_bytes(path, data)
        self._sorted = None
        return self._meta(path.stat())

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, InvalidKeyError):
            return
        self._sorted = None

    def keys(self) -> list[str]:
        # NOTE: the listing is cached; our own writes invalidate it, outside writers are seen
        # within _RESCAN_S seconds.
        now = time.monotonic()
        if self._sorted is None or now - self._scanned_at > self._RESCAN_S:
            keys = []
            for dirpath, dirnames, files in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = os.path.relpath(dirpath, self.root)
                for name in files:
                    if name.startswith("."):  # temp files of in-progress writes
                        continue
                    keys.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
            keys.sort()
            self._sorted = keys
            self._scanned_at = now
        return self._sorted

    def __len__(self) -> int:
        return len(self.keys())


def _is_regular(st: os.stat_result) -> bool:
    import stat as _stat

    return _stat.S_ISREG(st.st_mode)


# ---------------------------------------------------------------------------------------------
# Body decoding
# ---------------------------------------------------------------------------------------------

def _decode_chunked(buf: bytearray | bytes, start: int) -> tuple[bytes, int] | None:
    """HTTP/1.1 chunked body at ``buf[start:]``: (body, end offset), or None if incomplete."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_field = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_field, 16)
        except ValueError:
            raise ValueError(f"bad chunk size {size_field[:20]!r}") from None
        pos = eol + 2
        if size == 0:
            # trailers until an empty line
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return bytes(out), eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos:pos + size]
        pos += size + 2


def _decode_aws_chunked(body: bytes) -> bytes:
    """The ``aws-chunked`` content encoding (SigV4 streaming uploads): same framing as HTTP
    chunked, with ``;chunk-signature=...`` extensions and optional trailers (checksums)."""
    decoded = _decode_chunked(body + (b"" if body.endswith(b"\r\n\r\n") else b"\r\n"), 0)
    if decoded is None:
        raise ValueError("truncated aws-chunked body")
    return decoded[0]


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------

class _Stats:
    __slots__ = ("requests", "by_op", "bytes_out", "bytes_in", "errors", "in_flight", "peak_in_flight",
                 "connections", "peak_connections", "started", "cpu_at_reset", "thread_cpu_at_reset")

    def __init__(self, connections: int = 0) -> None:
        self.requests = 0
        self.by_op: dict[str, int] = {}
        self.bytes_out = 0
        self.bytes_in = 0
        self.errors = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.connections = connections
        self.peak_connections = connections
        self.started = time.time()
        self.cpu_at_reset = time.process_time()
        self.thread_cpu_at_reset = time.thread_time()  # NOTE: always created on the loop thread


class _Conn(asyncio.Protocol):
    """One client connection. Requests on it are answered one at a time, in order (HTTP/1.1)."""

    __slots__ = ("srv", "id", "transport", "buf", "busy", "closed", "head", "sent_continue")

    def __init__(self, srv: "S3Server", conn_id: int) -> None:
        self.srv = srv
        self.id = conn_id
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False
        self.closed = False
        self.head: tuple[str, str, str, dict[str, str], int] | None = None
        self.sent_continue = False

    # -- asyncio callbacks --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        st = self.srv._stats
        st.connections += 1
        if st.connections > st.peak_connections:
            st.peak_connections = st.connections
        self.srv._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.srv._stats.connections -= 1
        self.srv._conns.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    # -- parsing --------------------------------------------------------------------------------
    def _next(self) -> None:
        while not self.busy and not self.closed and self.buf:
            try:
                req = self._parse()
            except ValueError as exc:
                self._send_now(s3_error(400, "BadRequest", str(exc)), keep_alive=False)
                return
            if req is None:
                return
            self.srv._dispatch(self, req)

    def _parse(self) -> Request | None:
        buf = self.buf
        if self.head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEADER_BYTES:
                    raise ValueError("request header too large")
                return None
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                raise ValueError(f"bad request line {lines[0][:80]!r}") from None
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if not sep:
                    raise ValueError(f"bad header line {line[:80]!r}")
                headers[name.strip().lower()] = value.strip()
            self.head = (method, target, version, headers, end + 4)
            self.sent_continue = False
        method, target, version, headers, body_start = self.head
        te = headers.get("transfer-encoding")
        if te is not None and "chunked" in te.lower():
            decoded = _decode_chunked(buf, body_start)
            if decoded is None:
                self._maybe_continue(headers)
                return None
            body, consumed = decoded
        else:
            try:
                n = int(headers.get("content-length") or 0)
            except ValueError:
                raise ValueError(f"bad Content-Length {headers.get('content-length')!r}") from None
            if len(buf) - body_start < n:
                self._maybe_continue(headers)
                return None
            body = bytes(buf[body_start:body_start + n]) if n else b""
            consumed = body_start + n
        del buf[:consumed]
        self.head = None
        if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"
        path, _, query = target.partition("?")
        if path.startswith(("http://", "https://")):  # absolute-form target
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        path = unquote(path)
        bucket = key = None
        if path.startswith("/") and len(path) > 1:
            b, sep, k = path[1:].partition("/")
            bucket = b
            key = k if sep and k else None
        srv = self.srv
        srv._seq += 1
        return Request(method, target, path, query, headers, body, bucket, key, self.id, srv._seq)

    def _maybe_continue(self, headers: dict[str, str]) -> None:
        if not self.sent_continue and headers.get("expect", "").lower() == "100-continue":
            self.sent_continue = True
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]

    # -- writing --------------------------------------------------------------------------------
    def _head_bytes(self, resp: Response, keep_alive: bool) -> bytes:
        srv = self.srv
        n = resp.content_length if resp.content_length is not None else len(resp.body)
        parts = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}\r\n"]
        for k, v in resp.headers:
            parts.append(f"{k}: {v}\r\n")
        if resp.status not in (204,) and resp.status >= 200:
            parts.append(f"Content-Length: {n}\r\n")
        parts.append(f"x-amz-request-id: {srv._seq:016X}\r\nDate: {srv._date()}\r\nServer: cdl-bench-s3\r\n")
        if not keep_alive:
            parts.append("Connection: close\r\n")
        parts.append("\r\n")
        return "".join(parts).encode("latin-1")

    def _send_now(self, resp: Response, keep_alive: bool) -> None:
        t = self.transport
        if self.closed or t is None:
            return
        t.write(self._head_bytes(resp, keep_alive))
        if resp.body:
            t.write(resp.body)
        self.srv._stats.bytes_out += len(resp.body)
        if not keep_alive:
            self.closed = True
            t.close()

    async def _send_slow(self, resp: Response, keep_alive: bool) -> None:
        """Honours bandwidth pacing and the fault knobs (truncate, stall, reset)."""
        t = self.transport
        if self.closed or t is None:
            return
        if resp.reset:
            self._reset()
            return
        body = resp.body
        if resp.truncate_to is not None:
            body = body[:resp.truncate_to]
            keep_alive = False
        srv = self.srv
        if srv._bandwidth is not None and body:
            await asyncio.sleep(srv._reserve_link(len(body)))
        if self.closed:
            return
        t.write(self._head_bytes(resp, keep_alive))
        if resp.stall_s > 0:
            first = body[:resp.stall_after]
            if first:
                t.write(first)
            await asyncio.sleep(resp.stall_s)
            if self.closed:
                return
            body = body[resp.stall_after:]
        if body:
            t.write(body)
        srv._stats.bytes_out += len(resp.body)
        if not keep_alive:
            self.closed = True
            t.close()

    def _reset(self) -> None:
        t = self.transport
        self.closed = True
        if t is None:
            return
        sock = t.get_extra_info("socket")
        if sock is not None:
            try:  # SO_LINGER 0: close() sends RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        t.abort()


class S3Server:
    """The server. ``start()`` runs it on a uvloop event loop in a daemon thread; ``stop()`` ends it.

    ``port=0`` picks a free port (see :attr:`endpoint_url`). ``data_dir`` serves each of its
    subdirectories as a bucket; ``buckets`` maps extra bucket names to a directory, or to
    ``None`` for an empty in-memory bucket. Buckets created over HTTP live in memory.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency_ms: float = 0.0, jitter_ms: float = 0.0,
                 bandwidth_mb_s: float | None = None, data_dir: str | os.PathLike | None = None,
                 buckets: dict[str, str | os.PathLike | None] | None = None, hooks: Iterable[RequestHook] = (),
                 seed: int | None = None, region: str = "us-east-1") -> None:
        self.host = host
        self.port = port
        self.region = region
        self.config = ServerConfig(latency_ms, jitter_ms, bandwidth_mb_s).validate()
        self.hooks: list[RequestHook] = list(hooks)
        self._rng = random.Random(seed)
        self._buckets: dict[str, _MemBucket | _DirBucket] = {}
        if data_dir is not None:
            root = Path(data_dir)
            if not root.is_dir():
                raise NotADirectoryError(f"data_dir {str(root)!r} is not a directory")
            for child in sorted(root.iterdir()):
                if child.is_dir() and not child.name.startswith("."):
                    self._buckets[child.name] = _DirBucket(child.name, child)
        for name, where in (buckets or {}).items():
            if where is None:
                self._buckets[name] = _MemBucket(name)
            else:
                if not Path(where).is_dir():
                    raise NotADirectoryError(f"bucket {name!r}: {str(where)!r} is not a directory")
                self._buckets[name] = _DirBucket(name, Path(where))
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task] = set()
        self._conn_ids = 0
        self._seq = 0
        self._date_cache = (0, "")
        self._link_free_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._stats: _Stats | None = None  # created on the loop thread
        self._apply_config()

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "S3Server":
        """Bind and serve in a background thread; returns once the socket accepts connections."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            try:
                import uvloop

                loop = uvloop.new_event_loop()
            except ImportError:
                loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._bind())
            except BaseException as exc:  # port in use, bad host...
                error.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="s3-bench-server", daemon=True)
        self._thread.start()
        ready.wait()
        if error:
            self._thread.join()
            self._thread = None
            raise error[0]
        return self

    async def _bind(self) -> None:
        self._stats = _Stats()
        loop = asyncio.get_running_loop()
        self._loop = loop

        def factory() -> _Conn:
            self._conn_ids += 1
            return _Conn(self, self._conn_ids)

        self._server = await loop.create_server(factory, self.host, self.port, backlog=1024, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.close()
        # NOTE: only our own response tasks: the caller of serve_forever may be awaiting us.
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Close the listener and every connection, stop the loop and join its thread."""
        loop, thread = self._loop, self._thread
        if thread is None or loop is None:
            return
        if thread.is_alive() and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None

    close = stop

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def serve_forever(self, stop: asyncio.Event) -> None:
        """Serve on the *current* loop until ``stop`` is set (the command-line mode)."""
        await self._bind()
        try:
            await stop.wait()
        finally:
            await self._shutdown()

    # -- thread-safe control API ----------------------------------------------------------------
    def _call(self, fn: Any, *args: Any) -> Any:
        loop = self._loop
        if loop is None or self._thread is None:
            return fn(*args)
        if threading.current_thread() is self._thread:
            return fn(*args)

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters since the last reset (see module docstring)."""
        return self._call(self._snapshot)

    def reset_stats(self) -> dict[str, Any]:
        """Zero the counters (peaks start again from the current values); returns the old snapshot."""
        return self._call(self._reset_stats)

    def configure(self, **changes: Any) -> ServerConfig:
        """Change ``latency_ms``, ``jitter_ms`` and/or ``bandwidth_mb_s`` while running."""
        return self._call(self._configure, changes)

    def create_bucket(self, name: str, directory: str | os.PathLike | None = None) -> None:
        def create() -> None:
            self._buckets[name] = _DirBucket(name, Path(directory)) if directory is not None else _MemBucket(name)
        self._call(create)

    def put_object(self, bucket: str, key: str, data: bytes) -> None:
        self._call(lambda: self._buckets[bucket].put(key, bytes(data)))

    def drop_idle_connections(self) -> int:
        """Close every connection not in the middle of a request, as an idle-timeout would;
        returns how many. Clients must notice and reconnect."""
        def drop() -> int:
            idle = [c for c in self._conns if not c.busy and c.transport is not None]
            for c in idle:
                c.closed = True
                c.transport.close()  # type: ignore[union-attr]
            return len(idle)
        return self._call(drop)

    # -- internals ------------------------------------------------------------------------------
    def _apply_config(self) -> None:
        c = self.config
        self._latency = c.latency_ms / 1000.0
        self._jitter = c.jitter_ms / 1000.0
        self._bandwidth = c.bandwidth_mb_s * 1e6 if c.bandwidth_mb_s else None

    def _configure(self, changes: dict[str, Any]) -> ServerConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(ServerConfig)}
        if unknown:
            raise ValueError(f"unknown server settings {sorted(unknown)}")
        self.config = dataclasses.replace(self.config, **changes).validate()
        self._apply_config()
        return self.config

    def _snapshot(self) -> dict[str, Any]:
        st = self._stats
        if st is None:
            st = _Stats()
        elapsed = time.time() - st.started
        return {
            "requests": st.requests,
            "by_op": dict(st.by_op),
            "gets": st.by_op.get("GetObject", 0),
            "bytes_out": st.bytes_out,
            "bytes_in": st.bytes_in,
            "errors": st.errors,
            "in_flight": st.in_flight,
            "peak_in_flight": st.peak_in_flight,
            "connections": st.connections,
            "peak_connections": st.peak_connections,
            "elapsed_s": elapsed,
            # The loop thread does all the serving; process CPU also counts the caller's threads
            # when the server runs in-process.
            "server_cpu_s": time.thread_time() - st.thread_cpu_at_reset,
            "process_cpu_s": time.process_time() - st.cpu_at_reset,
            "config": dataclasses.asdict(self.config),
            "pid": os.getpid(),
        }

    def _reset_stats(self) -> dict[str, Any]:
        snap = self._snapshot()
        old = self._stats
        self._stats = _Stats(old.connections if old else 0)
        self._stats.in_flight = old.in_flight if old else 0
        self._stats.peak_in_flight = self._stats.in_flight
        return snap

    def _date(self) -> str:
        now = int(time.time())
        if self._date_cache[0] != now:
            self._date_cache = (now, _http_date(now))
        return self._date_cache[1]

    def _reserve_link(self, nbytes: int) -> float:
        """Seconds to wait before sending ``nbytes`` over the shared capped link."""
        assert self._bandwidth is not None and self._loop is not None
        now = self._loop.time()
        start = max(now, self._link_free_at)
        self._link_free_at = start + nbytes / self._bandwidth
        return self._link_free_at - now

    def _delay(self) -> float:
        d = self._latency
        if self._jitter:
            d += self._rng.uniform(-self._jitter, self._jitter)
        return d if d > 0 else 0.0

    def _dispatch(self, conn: _Conn, req: Request) -> None:
        keep_alive = req.headers.get("connection", "").lower() != "close"
        if req.path.startswith("/_admin/"):
            conn._send_now(self._admin(req), keep_alive)
            return
        st = self._stats
        st.requests += 1
        st.bytes_in += len(req.body)
        st.in_flight += 1
        if st.in_flight > st.peak_in_flight:
            st.peak_in_flight = st.in_flight
        delay = self._delay()
        if delay > 0 or self.hooks or self._bandwidth is not None:
            conn.busy = True
            task = self._loop.create_task(self._respond_later(conn, req, delay, keep_alive))  # type: ignore[union-attr]
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        resp = self._handle_safe(req)
        self._account(resp)
        conn._send_now(resp, keep_alive and not resp.close)

    async def _respond_later(self, conn: _Conn, req: Request, delay: float, keep_alive: bool) -> None:
        resp: Response | None = None
        try:
            for hook in self.hooks:
                resp = hook.before(req)
                if resp is not None:
                    break
            if resp is None:
                resp = self._handle_safe(req)
            for hook in self.hooks:
                resp = hook.after(req, resp) or resp
            delay += resp.delay_s
            if delay > 0:
                await asyncio.sleep(delay)
            await conn._send_slow(resp, keep_alive and not resp.close)
        finally:
            if resp is not None:
                self._account(resp)
            else:
                self._stats.in_flight -= 1
            conn.busy = False
            if not conn.closed:
                conn._next()

    def _account(self, resp: Response) -> None:
        st = self._stats
        st.in_flight -= 1
        st.by_op[resp.op] = st.by_op.get(resp.op, 0) + 1
        if resp.status >= 400:
            st.errors += 1

    def _handle_safe(self, req: Request) -> Response:
        try:
            return self.handle(req)
        except InvalidKeyError as exc:
            return s3_error(400, "InvalidArgument", str(exc), req.path, req.method == "HEAD")
        except ValueError as exc:
            return s3_error(400, "InvalidRequest", str(exc), req.path, req.method == "HEAD")
        except Exception as exc:  # a server bug must answer 500, not hang the client
            return s3_error(500, "InternalError", f"{type(exc).__name__}: {exc}", req.path, req.method == "HEAD")

    # -- S3 semantics ---------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        """Answer one S3 request (no latency, no hooks)."""
        m = req.method
        head = m == "HEAD"
        if req.bucket is None:
            if m == "GET":
                return self._list_buckets()
            return s3_error(405, "MethodNotAllowed", f"{m} / is not supported", "/", head)
        bucket = self._buckets.get(req.bucket)
        if req.key is None:
            return self._bucket_op(req, bucket)
        if bucket is None:
            return s3_error(404, "NoSuchBucket", "The specified bucket does not exist", req.path, head,
                            [("BucketName", req.bucket)])
        if req.query:
            params = req.params
            for p in params:
                if p == "x-id" or p.startswith(("response-", "X-Amz-", "x-amz-")):
                    continue
                return s3_error(501, "NotImplemented", f"object subresource {p!r} is not implemented by this server",
                                req.path, head)
        if m == "GET" or head:
            return self._get_object(req, bucket, head)
        if m == "PUT":
            if "x-amz-copy-source" in req.headers:
                return s3_error(501, "NotImplemented", "CopyObject is not implemented by this server", req.path)
            body = req.body
            if "aws-chunked" in req.headers.get("content-encoding", "") or \
                    req.headers.get("x-amz-content-sha256", "").startswith("STREAMING-"):
                body = _decode_aws_chunked(body)
                expected = req.headers.get("x-amz-decoded-content-length")
                if expected is not None and int(expected) != len(body):
                    return s3_error(400, "IncompleteBody", f"decoded {len(body)} bytes, header says {expected}",
                                    req.path)
            meta = bucket.put(req.key, body)
            return Response(200, [("ETag", meta.etag)], op="PutObject")
        if m == "DELETE":
            bucket.delete(req.key)
            return Response(204, op="DeleteObject")
        return s3_error(405, "MethodNotAllowed", f"{m} is not allowed on objects", req.path)

    def _get_object(self, req: Request, bucket: _MemBucket | _DirBucket, head: bool) -> Response:
        key = req.key
        assert key is not None
        if head:
            meta = bucket.head(key)
            data = b""
        else:
            obj = bucket.get(key)
            meta = obj[1] if obj is not None else None
            data = obj[0] if obj is not None else b""
        op = "HeadObject" if head else "GetObject"
        if meta is None:
            resp = s3_error(404, "NoSuchKey", "The specified key does not exist.", req.path, head, [("Key", key)])
            resp.op = op
            return resp
        size = meta.size
        headers = [("Content-Type", "application/octet-stream"), ("ETag", meta.etag),
                   ("Last-Modified", meta.last_modified), ("Accept-Ranges", "bytes")]
        rng = req.headers.get("range")
        status = 200
        if rng is not None:
            parsed = _parse_range(rng, size)
            if parsed == "invalid":
                resp = s3_error(416, "InvalidRange", "The requested range is not satisfiable", req.path, head,
                                [("RangeRequested", rng), ("ActualObjectSize", str(size))])
                resp.headers.append(("Content-Range", f"bytes */{size}"))
                resp.op = op
                return resp
            if parsed is not None:
                start, end = parsed
                status = 206
                headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
                if not head:
                    data = memoryview(data)[start:end + 1] if (start or end + 1 != size) else data
                size = end - start + 1
        if head:
            return Response(status, headers, b"", content_length=size, op=op)
        return Response(status, headers, data, op=op)

    def _bucket_op(self, req: Request, bucket: _MemBucket | _DirBucket | None) -> Response:
        m = req.method
        head = m == "HEAD"
        name = req.bucket
        assert name is not None
        params = req.params
        if m == "PUT" and not params:
            if bucket is not None:
                return s3_error(409, "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket "
                                "succeeded and you already own it.", f"/{name}", extra=[("BucketName", name)])
            if not _BUCKET_RE.match(name) or ".." in name:
                return s3_error(400, "InvalidBucketName", "The specified bucket is not valid.", f"/{name}",
                                extra=[("BucketName", name)])
            self._buckets[name] = _MemBucket(name)
            return Response(200, [("Location", f"/{name}")], op="CreateBucket")
        if bucket is None:
            return s3_error(404, "NoSuchBucket", "The specified bucket does not exist", f"/{name}", head,
                            [("BucketName", name)])
        if head:
            return Response(200, [("x-amz-bucket-region", self.region)], op="HeadBucket")
        if m == "GET":
            if "location" in params:
                body = f'{_XML_DECL}<LocationConstraint xmlns="{_S3_NS}">' + \
                    ("" if self.region == "us-east-1" else self.region) + "</LocationConstraint>"
                return Response(200, [("Content-Type", "application/xml")], body.encode(), op="GetBucketLocation")
            unsupported = set(params) - {"list-type", "prefix", "delimiter", "max-keys", "continuation-token",
                                         "start-after", "encoding-type", "fetch-owner", "marker", "x-id"}
            if unsupported:
                return s3_error(501, "NotImplemented", f"bucket subresource {sorted(unsupported)[0]!r} is not "
                                "implemented by this server", f"/{name}")
            return self._list_objects(bucket, params, v2=params.get("list-type") == "2")
        if m == "DELETE" and not params:
            if len(bucket):
                return s3_error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty", f"/{name}",
                                extra=[("BucketName", name)])
            del self._buckets[name]
            return Response(204, op="DeleteBucket")
        if m == "POST" and "delete" in params:
            return self._delete_objects(bucket, req.body)
        return s3_error(501, "NotImplemented", f"{m} /{name}?{req.query} is not implemented by this server", f"/{name}")

    def _delete_objects(self, bucket: _MemBucket | _DirBucket, body: bytes) -> Response:
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError as exc:
            return s3_error(400, "MalformedXML", f"DeleteObjects body is not valid XML: {exc}")
        ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        quiet = (root.findtext(f"{ns}Quiet") or "").lower() == "true"
        parts = [_XML_DECL, f'<DeleteResult xmlns="{_S3_NS}">']
        for obj in root.iter(f"{ns}Object"):
            key = obj.findtext(f"{ns}Key")
            if key is None:
                continue
            bucket.delete(key)
            if not quiet:
                parts.append(f"<Deleted><Key>{escape(key)}</Key></Deleted>")
        parts.append("</DeleteResult>")
        return Response(200, [("Content-Type", "application/xml")], "".join(parts).encode(), op="DeleteObjects")

    def _list_buckets(self) -> Response:
        parts = [_XML_DECL, f'<ListAllMyBucketsResult xmlns="{_S3_NS}"><Owner><ID>bench</ID>'
                 "<DisplayName>bench</DisplayName></Owner><Buckets>"]
        for name in sorted(self._buckets):
            parts.append(f"<Bucket><Name>{escape(name)}</Name><CreationDate>{_iso_date(self._buckets[name].created)}"
                         "</CreationDate></Bucket>")
        parts.append("</Buckets></ListAllMyBucketsResult>")
        return Response(200, [("Content-Type", "application/xml")], "".join(parts).encode(), op="ListBuckets")

    def _list_objects(self, bucket: _MemBucket | _DirBucket, params: dict[str, str], v2: bool) -> Response:
        prefix = params.get("prefix", "")
        delimiter = params.get("delimiter", "")
        try:
            max_keys = max(0, min(1000, int(params.get("max-keys", "1000"))))
        except ValueError:
            return s3_error(400, "InvalidArgument", f"max-keys must be an integer, got {params.get('max-keys')!r}")
        url = params.get("encoding-type") == "url"
        enc = (lambda s: quote(s, safe="/")) if url else (lambda s: s)
        if v2:
            token = params.get("continuation-token")
            if token:
                try:
                    start_key = base64.urlsafe_b64decode(token.encode()).decode()
                except (ValueError, UnicodeDecodeError):
                    return s3_error(400, "InvalidArgument", "The continuation token provided is incorrect")
                after = None
            else:
                start_key = None
                after = params.get("start-after") or None
        else:
            start_key = None
            after = params.get("marker") or None
        keys = bucket.keys()
        lo = prefix
        if start_key is not None and start_key > lo:
            lo = start_key
        i = bisect_left(keys, lo)
        if after is not None:
            j = bisect_left(keys, after)
            if j < len(keys) and keys[j] == after:
                j += 1
            i = max(i, j)
        contents: list[str] = []
        prefixes: list[str] = []
        truncated = False
        next_key = None
        last_emitted = None
        n = 0
        while i < len(keys):
            k = keys[i]
            if not k.startswith(prefix):
                break
            if n >= max_keys:
                truncated = True
                next_key = k
                break
            if delimiter:
                d = k.find(delimiter, len(prefix))
                if d >= 0:
                    cp = k[:d + len(delimiter)]
                    prefixes.append(cp)
                    n += 1
                    last_emitted = cp
                    # skip every key under this common prefix
                    i = bisect_left(keys, cp + "\U0010ffff", i)
                    while i < len(keys) and keys[i].startswith(cp):
                        i += 1
                    continue
            entry = bucket.head(k) if isinstance(bucket, _DirBucket) else bucket.objects[k][1]
            if entry is not None:
                contents.append(f"<Contents><Key>{escape(enc(k))}</Key><LastModified>{_iso_date(entry.mtime)}"
                                f"</LastModified><ETag>{escape(entry.etag)}</ETag><Size>{entry.size}</Size>"
                                "<StorageClass>STANDARD</StorageClass></Contents>")
                n += 1
                last_emitted = k
            i += 1
        parts = [_XML_DECL, f'<ListBucketResult xmlns="{_S3_NS}"><Name>{escape(bucket.name)}</Name>'
                 f"<Prefix>{escape(enc(prefix))}</Prefix><MaxKeys>{max_keys}</MaxKeys>"
                 f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if delimiter:
            parts.append(f"<Delimiter>{escape(enc(delimiter))}</Delimiter>")
        if url:
            parts.append("<EncodingType>url</EncodingType>")
        if v2:
            parts.append(f"<KeyCount>{n}</KeyCount>")
            if params.get("continuation-token"):
                parts.append(f"<ContinuationToken>{escape(params['continuation-token'])}</ContinuationToken>")
            if params.get("start-after"):
                parts.append(f"<StartAfter>{escape(enc(params['start-after']))}</StartAfter>")
            if truncated and next_key is not None:
                token = base64.urlsafe_b64encode(next_key.encode()).decode()
                parts.append(f"<NextContinuationToken>{token}</NextContinuationToken>")
        else:
            parts.append(f"<Marker>{escape(enc(params.get('marker', '')))}</Marker>")
            if truncated and last_emitted is not None:
                parts.append(f"<NextMarker>{escape(enc(last_emitted))}</NextMarker>")
        parts.extend(contents)
        for cp in prefixes:
            parts.append(f"<CommonPrefixes><Prefix>{escape(enc(cp))}</Prefix></CommonPrefixes>")
        parts.append("</ListBucketResult>")
        return Response(200, [("Content-Type", "application/xml")], "".join(parts).encode(),
                        op="ListObjectsV2" if v2 else "ListObjects")

    # -- admin ----------------------------------------------------------------------------------
    def _admin(self, req: Request) -> Response:
        what = req.path[len("/_admin/"):]
        try:
            if what == "stats" and req.method == "GET":
                payload: Any = self._snapshot()
            elif what == "reset" and req.method == "POST":
                payload = self._reset_stats()
            elif what == "config" and req.method == "GET":
                payload = dataclasses.asdict(self.config)
            elif what == "config" and req.method in ("PUT", "POST"):
                payload = dataclasses.asdict(self._configure(json.loads(req.body or b"{}")))
            else:
                return Response(404, [("Content-Type", "application/json")],
                                json.dumps({"error": f"no admin action {req.method} {what!r}"}).encode())
        except (ValueError, TypeError) as exc:
            return Response(400, [("Content-Type", "application/json")], json.dumps({"error": str(exc)}).encode())
        return Response(200, [("Content-Type", "application/json")], json.dumps(payload).encode())


def _parse_range(value: str, size: int) -> tuple[int, int] | None | str:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end); None = ignore the
    header (serve the whole object, as S3 does for multi-range or malformed values);
    ``"invalid"`` = 416."""
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0 or size == 0:
                return "invalid"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start < 0 or end < start:
        return None
    if start >= size:
        return "invalid"
    return start, min(end, size - 1)


# ---------------------------------------------------------------------------------------------
# Running it as a separate process (what the benchmarks do: the server must not share the GIL)
# ---------------------------------------------------------------------------------------------

class ServerProcess:
    """Starts ``python -m benchmarking.s3_server`` as a child process and talks to its admin API.

    Benchmarks use this rather than :class:`S3Server` in a thread, so the server's CPU does not
    compete for the client's GIL and its CPU time is measured on its own.
    """

    def __init__(self, *, latency_ms: float = 0.0, jitter_ms: float = 0.0, bandwidth_mb_s: float | None = None,
                 data_dir: str | os.PathLike | None = None, buckets: dict[str, str | os.PathLike | None] | None = None,
                 port: int = 0, seed: int | None = None, startup_timeout: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "benchmarking.s3_server", "--port", str(port), "--latency-ms", str(latency_ms),
               "--jitter-ms", str(jitter_ms)]
        if bandwidth_mb_s:
            cmd += ["--bandwidth-mb-s", str(bandwidth_mb_s)]
        if data_dir is not None:
            cmd += ["--data-dir", str(data_dir)]
        if seed is not None:
            cmd += ["--seed", str(seed)]
        for name, where in (buckets or {}).items():
            cmd += ["--bucket", name if where is None else f"{name}={where}"]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # stderr goes to a file: a pipe nobody reads could fill up and block the server.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
        deadline = time.monotonic() + startup_timeout
        line = ""
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line or line.startswith("listening on "):
                break
        if not line.startswith("listening on "):
            self.stop()
            self._stderr.seek(0)
            err = self._stderr.read()
            raise RuntimeError(f"s3 server did not start: {line.strip()!r} {err.strip()[-2000:]}")
        self.endpoint_url = line.split()[-1]
        self.port = int(self.endpoint_url.rsplit(":", 1)[1])

    def _admin(self, method: str, what: str, payload: dict | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(f"{self.endpoint_url}/_admin/{what}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        return self._admin("GET", "stats")

    def reset_stats(self) -> dict[str, Any]:
        return self._admin("POST", "reset")

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._admin("PUT", "config", changes)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    close = stop

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _parse_bucket_arg(value: str) -> tuple[str, str | None]:
    name, sep, where = value.partition("=")
    return name, (where if sep else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarking.s3_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; keep it on loopback)")
    p.add_argument("--port", type=int, default=9000, help="0 picks a free port (default 9000)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="fixed delay before every response")
    p.add_argument("--jitter-ms", type=float, default=0.0, help="uniform jitter added to the delay (+/-)")
    p.add_argument("--bandwidth-mb-s", type=float, default=None, help="cap on bytes sent, in MB/s (10^6)")
    p.add_argument("--data-dir", default=None, help="serve each subdirectory of DIR as a bucket")
    p.add_argument("--bucket", action="append", default=[], metavar="NAME[=DIR]",
                   help="add a bucket: in memory, or backed by DIR (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="seed for the jitter")
    args = p.parse_args(argv)
    buckets = dict(_parse_bucket_arg(b) for b in args.bucket)
    server = S3Server(args.host, args.port, latency_ms=args.latency_ms, jitter_ms=args.jitter_ms,
                      bandwidth_mb_s=args.bandwidth_mb_s, data_dir=args.data_dir, buckets=buckets, seed=args.seed)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def run() -> None:
        task = asyncio.ensure_future(server.serve_forever(stop))
        while server._server is None and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()
        print(f"buckets: {', '.join(sorted(server._buckets)) or '(none)'}", file=sys.stderr, flush=True)
        print(f"listening on {server.endpoint_url}", flush=True)
        await task

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
