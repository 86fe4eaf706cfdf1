"""The benchmark S3 server: lifecycle (a uvloop thread, or ``serve_forever`` on the current loop),
dispatch with injected latency, jitter and bandwidth, hooks, counters and the admin endpoint."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .buckets import DirBucket, InvalidKeyError, MemBucket, _http_date
from .http import Request, RequestHook, Response, _Conn
from .s3api import S3Api, s3_error

__all__ = ["S3Server", "ServerConfig"]


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



class S3Server(S3Api):
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
        self._buckets: dict[str, MemBucket | DirBucket] = {}
        if data_dir is not None:
            root = Path(data_dir)
            if not root.is_dir():
                raise NotADirectoryError(f"data_dir {str(root)!r} is not a directory")
            for child in sorted(root.iterdir()):
                if child.is_dir() and not child.name.startswith("."):
                    self._buckets[child.name] = DirBucket(child.name, child)
        for name, where in (buckets or {}).items():
            if where is None:
                self._buckets[name] = MemBucket(name)
            else:
                if not Path(where).is_dir():
                    raise NotADirectoryError(f"bucket {name!r}: {str(where)!r} is not a directory")
                self._buckets[name] = DirBucket(name, Path(where))
        self._uploads = {}
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
            self._buckets[name] = DirBucket(name, Path(directory)) if directory is not None else MemBucket(name)
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


