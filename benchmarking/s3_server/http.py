"""HTTP/1.1 for the benchmark server: requests, responses, per-request hooks, and the connection
protocol (parsing, ``Expect: 100-continue``, chunked bodies, paced/faulty writes). Knows nothing about S3."""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote

if TYPE_CHECKING:
    from .server import S3Server

__all__ = ["Request", "Response", "RequestHook"]

_MAX_HEADER_BYTES = 64 * 1024
_REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 206: "Partial Content", 400: "Bad Request",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
    411: "Length Required", 416: "Requested Range Not Satisfiable", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
}

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
                from .s3api import s3_error

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

