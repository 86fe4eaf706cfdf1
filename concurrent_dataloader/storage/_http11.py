"""HTTP/1.1 for the lean S3 client: an incremental response parser, blocking keep-alive
connections for fetch threads and an :class:`asyncio.Protocol` connection for the event loop.

Only what S3 answers needs: ``Content-Length``, chunked and read-until-close bodies, ``100
Continue``, ``Connection: close``; a body larger than ``max_object_bytes`` is refused before it
is read (:class:`TooLarge`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl

__all__ = ["TooLarge", "ResponseParser", "SyncConn", "AsyncConn"]

_RECV = 256 * 1024


class TooLarge(OSError):
    """The response body is larger than ``max_object_bytes`` (re-raised naming the key)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"response body of {size} bytes")
        self.size = size


class ResponseParser:
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
                    raise TooLarge(self.remaining)
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
            raise TooLarge(len(self.buf))  # chunked / read-until-close: no size up front
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


class SyncConn:
    __slots__ = ("sock", "reused", "got_bytes", "addr")

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, timeout: float) -> None:
        self.addr = (host, port)
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = tls.wrap_socket(sock, server_hostname=host) if tls is not None else sock
        self.reused = False
        self.got_bytes = False  # did the last request get any response byte (not a stale socket)?

    def request(self, raw: bytes, body: bytes | None, head_only: bool, timeout: float,
                limit: int | None = None) -> ResponseParser:
        sock = self.sock
        sock.settimeout(timeout)
        self.got_bytes = False
        if body:
            sock.sendall(raw + body if len(body) < 65536 else raw)
            if len(body) >= 65536:
                sock.sendall(body)
        else:
            sock.sendall(raw)
        parser = ResponseParser(head_only, limit)
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


class AsyncConn(asyncio.Protocol):
    __slots__ = ("transport", "parser", "waiter", "broken", "reused", "loop", "timer", "got_bytes", "addr")

    def __init__(self, loop: asyncio.AbstractEventLoop, addr: tuple[str, int]) -> None:
        self.loop = loop
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.parser: ResponseParser | None = None
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
                      limit: int | None = None) -> ResponseParser:
        self.parser = ResponseParser(head_only, limit)
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
